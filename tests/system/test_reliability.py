"""`dvc repro` killed in the middle of feature extraction on a messy data set: the rerun resumes
from the finished batches, skips and reports the bad images, and gives the bytes and metrics of
an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import yaml
from PIL import Image

from tests.helpers.faults import pause_env, paused_pid
from tests.helpers.project import TINY, copy_project, run, set_params

TIMING_KEYS = {"train_seconds", "train_words_per_s", "decode_seconds"}



def _lock_md5(project: Path, stage: str) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return lock["stages"][stage]["outs"][0]["md5"]



def _untimed(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_KEYS}



def _messy_scenes(root: Path) -> dict[str, str]:
    """120 generated scenes in the Flickr8k layout, then: a truncated train image, a grey and a
    PNG-named-.jpg dev image, a test image deleted, two malformed caption lines."""
    from captioner.datasets.scenes import generate_scenes

    generate_scenes(root, n_images=120, image_size=64, seed=1, progress=False,
                    split_fractions={"train": 0.5, "dev": 0.25, "test": 0.25})
    images = root / "Flicker8k_Dataset"
    split = {s: (root / f"Flickr_8k.{s}Images.txt").read_text().split() for s in ("train", "dev", "test")}
    bad, grey, png, gone = split["train"][0], split["dev"][0], split["dev"][1], split["test"][0]
    data = (images / bad).read_bytes()
    (images / bad).write_bytes(data[: len(data) // 3])
    Image.open(images / grey).convert("L").save(images / grey)
    Image.open(images / png).save(images / png, format="PNG")
    (images / gone).unlink()
    with (root / "Flickr8k.token.txt").open("a") as f:
        f.write("a line without any tab\n" + f"{split['train'][1]}#7\t\n")
    return {"bad": Path(bad).stem, "gone": Path(gone).stem}



def test_dvc_repro_killed_mid_extraction_resumes_identically_and_reruns_reproduce(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    copy_project(project)
    messy = _messy_scenes(tmp_path / "scenes")
    set_params(project, {**TINY, "data": {"root": str(tmp_path / "scenes")}, "features": {"batch_size": 16}})
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "messy"]):
        run(cmd, project)
    features = project / "data/features/efficientnet_lite0.parquet"
    partial = project / "data/features/efficientnet_lite0.partial"

    # 1. Kill extract_features (SIGKILL) while it writes its 3rd batch: 2 of 8 batches are done.
    env, mark = pause_env(tmp_path, r"batch-000002\.parquet$")
    dvc = subprocess.Popen(["dvc", "repro", "extract_features"], cwd=project, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.kill(paused_pid(mark, dvc, "extract_features' 3rd batch"), signal.SIGKILL)
    out, _ = dvc.communicate(timeout=120)
    assert dvc.returncode != 0 and "failed to reproduce 'extract_features'" in out, out
    assert not features.exists() and not features.with_name("efficientnet_lite0.report.json").exists()
    assert sorted(p.name for p in partial.glob("*/batch-*.parquet")) == ["batch-000000.parquet", "batch-000001.parquet"]
    assert "extract_features" in run(["dvc", "status"], project)

    # 2. `dvc repro` resumes, skips the unreadable image, trains without its captions, cleans up.
    out = run(["dvc", "repro", "evaluate"], project)
    assert "resumed an interrupted run: 32 images" in out
    assert re.search(rf"skipped \S+{messy['bad']}\.jpg: cannot decode image", out)
    assert "train: dropped the captions of 1 train image(s) without features" in out
    assert not partial.exists()
    assert [str(p) for p in project.rglob("*") if p.name.endswith((".tmp", ".old"))] == []
    report = json.loads((project / "data/features/efficientnet_lite0.report.json").read_text())
    assert (report["images"], report["extracted"], report["skipped"], report["missing_on_disk"]) == (119, 118, 1, 1)
    assert report["skipped_images"][0]["image_id"] == messy["bad"]
    assert report["converted"] == {"format_mismatch": 1, "mode_converted": 1}
    reader = json.loads((project / "data/text/report.json").read_text())["reader"]
    assert reader["ignored"]["line_without_tab"] == 1 and reader["ignored"]["empty_caption"] == 1
    assert reader["ignored"]["split_image_missing_on_disk"] == 1
    resumed_md5, resumed_bytes = _lock_md5(project, "extract_features"), features.read_bytes()
    train_metrics, eval_metrics = _untimed(project / "metrics/train/metrics.json"), _untimed(project / "metrics/eval.json")

    # 3. An uninterrupted extraction gives the same bytes; retraining and re-evaluating with the
    #    same params and seed give the same metrics, exactly.
    run(["dvc", "repro", "-f", "-s", "extract_features"], project)
    assert features.read_bytes() == resumed_bytes and _lock_md5(project, "extract_features") == resumed_md5
    for stage in ("train", "scst", "evaluate"):  # scst: evaluate reads the retrained model, not the old copy
        run(["dvc", "repro", "-f", "-s", stage], project)
    assert _untimed(project / "metrics/train/metrics.json") == train_metrics
    assert _untimed(project / "metrics/eval.json") == eval_metrics

