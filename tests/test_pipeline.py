"""End to end: the real DAG (`dvc repro`) in a temporary git+dvc copy of the project, on a
tiny generated data set; then which stages a param change reruns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from captioner.config.params import update_params_file
from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "scenes": {"n_images": 48, "image_size": 64, "seed": 1,
               "split_fractions": {"train": 0.5, "dev": 0.25, "test": 0.25}},
    "features": {"batch_size": 16},
    "model": {"embedding_dim": 16, "units": 16, "dropout": 0.1},
    "train": {"epochs": 2, "batch_size": 32, "patience": 1},
    "evaluate": {"beam_width": 2, "batch_size": 8},
}


def run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def copy_project(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith(("data/", "metrics/")) or not (REPO / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)


def set_params(project: Path, updates: dict) -> None:
    update_params_file(project / "params.yaml", updates)


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_dvc_repro_end_to_end_and_incremental_reruns(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    copy_project(project)
    set_params(project, TINY)
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "tiny"], project)

    out = run(["dvc", "repro"], project)
    assert ran_stages(out) == {"generate_scenes", "clean_text", "extract_features", "build_sequences",
                               "train", "scst", "human_ceiling", "evaluate", "package"}
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert {"bleu1", "bleu2", "bleu3", "bleu4"} <= metrics.keys()
    assert {"cider", "meteor", "rouge_l", "bleu4"} <= metrics["coco"].keys()
    run_info = json.loads((project / "metrics/eval_run.json").read_text())
    assert run_info["split"] == "dev" and run_info["images"] == 12
    assert 0.0 <= metrics["bleu4"] <= metrics["bleu1"] <= 1.0
    assert (project / "data/model/model.keras").exists()
    assert (project / "metrics/train/metrics.json").exists()
    # scst.epochs 0: data/model is the cross-entropy model, byte for byte
    assert (project / "data/model/model.keras").read_bytes() == (project / "data/model_xe/model.keras").read_bytes()
    assert json.loads((project / "metrics/scst/metrics.json").read_text()) == {"epochs": 0}
    shown = run(["dvc", "metrics", "show", "--json"], project)
    assert "bleu4" in shown
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "repro"], project)

    # A train param: only train and what follows it are stale, and only they rerun.
    set_params(project, {"train": {"learning_rate": 0.002, "ensemble": 2}})
    status = run(["dvc", "status"], project)
    assert "train:" in status and "extract_features:" not in status and "clean_text:" not in status
    out = run(["dvc", "repro"], project)
    assert ran_stages(out) == {"train", "scst", "evaluate", "package"}
    assert "Stage 'extract_features' didn't change, skipping" in out
    meta = json.loads((project / "data/model/meta.json").read_text())
    assert meta["members"] == ["model.keras", "model_1.keras"]  # evaluate decoded with both

    # An evaluate param: only evaluate.
    set_params(project, {"evaluate": {"beam_width": 1}})
    assert ran_stages(run(["dvc", "repro"], project)) == {"evaluate", "package"}

    # Self-critical training: its own stage fine-tunes train's model (train does not rerun);
    # every member gets an SCST history, curves and the dev CIDEr-D before and after.
    set_params(project, {"scst": {"epochs": 1, "samples": 2, "max_length": 6}})
    assert ran_stages(run(["dvc", "repro"], project)) == {"scst", "evaluate", "package"}
    scst = json.loads((project / "metrics/scst/run.json").read_text())["members"]
    assert [h["member"] for h in scst] == [0, 1] and [e["epoch"] for e in scst[0]["epochs"]] == [0, 1]
    assert scst[0]["epochs"][1]["reward"] >= 0.0 and scst[0]["best_epoch"] in (0, 1)
    summary = json.loads((project / "metrics/scst/metrics.json").read_text())
    assert summary["epochs"] == 1 and summary["dev_cider"] >= summary["dev_cider_xe"]  # the best epoch is kept
    curve = (project / "metrics/scst/curves/dev_cider.tsv").read_text().splitlines()
    assert curve[0] == "epoch\tmember_0\tmember_1" and [r.split("\t")[0] for r in curve[1:]] == ["0", "1"]
    assert json.loads((project / "data/model/meta.json").read_text())["scst"]["epochs"] == 1
    assert "SCST" in run(["dvc", "plots", "show", "--json"], project)

    # A text param: the CNN features are reused.
    set_params(project, {"text": {"min_count": 2}, "scst": {"epochs": 0}})
    out = run(["dvc", "repro"], project)
    assert "extract_features" not in ran_stages(out)
    assert {"clean_text", "build_sequences", "train", "scst", "evaluate"} <= ran_stages(out)

    # The attention decoder: region features (float16) are extracted once ...
    pooled = project / "data/features/efficientnet_lite0.parquet"
    pooled_bytes = pooled.read_bytes()
    set_params(project, {"features": {"spatial": "grid", "dtype": "float16"},
                         "model": {"kind": "attention", "attention_dim": 8},
                         "train": {"ensemble": 2, "merge_members": 1}})  # one of each kind
    assert ran_stages(run(["dvc", "repro"], project)) == {"extract_features", "train", "scst", "evaluate", "package"}
    meta = json.loads((project / "data/model/meta.json").read_text())
    assert meta["kind"] == "attention" and meta["spatial"] == "grid" and meta["feature_dim"] == 49 * 1280
    assert meta["member_kinds"] == ["attention", "merge"]
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert 0.0 <= metrics["bleu4"] <= metrics["bleu1"] <= 1.0
    # ... a decoder-only change reuses them ...
    set_params(project, {"model": {"attention_reg": 0.5}})
    assert ran_stages(run(["dvc", "repro"], project)) == {"train", "scst", "evaluate", "package"}
    # ... and going back to the merge model restores the pooled features from DVC's run cache,
    # byte for byte, without running the CNN. (Trained in mixed precision, saved in float32.)
    set_params(project, {"features": {"spatial": "pooled", "dtype": "float32"}, "model": {"kind": "merge"},
                         "train": {"merge_members": 0, "precision": "mixed_bfloat16"}})
    out = run(["dvc", "repro"], project)
    assert "extract_features" not in ran_stages(out)
    assert pooled.read_bytes() == pooled_bytes
    model = keras.saving.load_model(project / "data/model/model_1.keras", compile=False)
    assert {la.compute_dtype for la in model.layers if la.weights} == {"float32"}
    assert json.loads((project / "metrics/eval.json").read_text())["bleu1"] > 0.0


SHARED_FLICKR8K = REPO.parent / "shared" / "flickr8k"


def make_flickr8k_slice(dst: Path, n_train: int = 36, n_dev: int = 14) -> None:
    """A ~50-image slice of the real Flickr8k, in its own layout (images linked, not copied)."""
    images = dst / "Flicker8k_Dataset"
    images.mkdir(parents=True)
    splits = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        names = (SHARED_FLICKR8K / f"Flickr_8k.{split}Images.txt").read_text().split()[:n]
        (dst / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
        splits.update(dict.fromkeys(names, split))
    for name in splits:
        (images / name).symlink_to(SHARED_FLICKR8K / "Flicker8k_Dataset" / name)
    lines = (SHARED_FLICKR8K / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    keep = [ln for ln in lines if ln.split("#")[0] in splits]
    keep += lines[:3]  # a few captions of images outside the slice: must be ignored, counted
    (dst / "Flickr8k.token.txt").write_text("\n".join(keep) + "\n", encoding="utf-8")


@pytest.mark.slow
def test_pipeline_on_a_real_flickr8k_slice(tmp_path: Path) -> None:
    require(SHARED_FLICKR8K.is_dir(), f"real Flickr8k at {SHARED_FLICKR8K} (the repo's sibling ../shared/flickr8k)")
    project = tmp_path / "proj"
    project.mkdir()
    copy_project(project)
    make_flickr8k_slice(tmp_path / "f8k")
    set_params(project, {
        **TINY,
        "data": {"root": str(tmp_path / "f8k")},
        "text": {"min_count": 2},
        "evaluate": {"split": "dev", "beam_width": 3, "batch_size": 8},
    })
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "slice"], project)
    out = run(["dvc", "repro", "evaluate"], project)
    assert "generate_scenes" not in ran_stages(out), "real data needs no generated scenes"
    report = json.loads((project / "data/text/report.json").read_text())
    assert report["images"] == {"dev": 14, "train": 36}
    metrics = json.loads((project / "metrics/eval.json").read_text())
    run_info = json.loads((project / "metrics/eval_run.json").read_text())
    assert run_info["split"] == "dev" and run_info["images"] == 14 and run_info["decoding"]["beam_width"] == 3
    assert 0.0 <= metrics["bleu4"] <= metrics["bleu1"] <= 1.0
