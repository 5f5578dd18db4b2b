"""End to end: the real DAG (`dvc repro`) in a temporary git+dvc copy of the project, on a
tiny generated data set (the reproduced workspace, built once per run); then which stages a
param change reruns; and the DAG on a slice of the real Flickr8k."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from tests.helpers.project import REPO, TINY, copy_project, ran_stages, require, run, set_params
from tests.helpers.workspace import clone_workspace

STAGES = {"generate_scenes", "clean_text", "extract_features", "build_sequences", "train", "scst",
          "human_ceiling", "evaluate", "package"}


@pytest.mark.smoke
def test_a_fresh_tiny_dag_runs_every_stage(workspace) -> None:
    """The reproduced workspace's first `dvc repro` ran every stage, from an empty cache, and its
    outputs are what the stages promise."""
    project = workspace.path
    assert ran_stages(workspace.repro_log) == STAGES
    metrics = json.loads((project / "metrics/eval.json").read_text())
    run_info = json.loads((project / "metrics/eval_run.json").read_text())
    assert run_info["split"] == "dev" and run_info["images"] == 12 and run_info["images_without_features"] == 0
    assert run_info["decoding"] == {"beam_width": 2, "length_penalty": 0.0, "block_repeat_ngram": 0, "max_length": 40,
                                    "rerank": "beam", "consensus_weights": "uniform"}
    assert 0.0 < metrics["bleu4"] < metrics["bleu3"] < metrics["bleu2"] < metrics["bleu1"] <= 1.0
    assert set(metrics["coco"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
    # The model learnt to look at the image: well above the image-blind baseline.
    assert metrics["coco"]["cider"] > 2 * metrics["blind_baseline"]["coco"]["cider"]
    assert metrics["bleu4"] > metrics["blind_baseline"]["bleu4"]
    train = json.loads((project / "metrics/train/metrics.json").read_text())
    curve = [line.split("\t") for line in (project / "metrics/train/curves/loss.tsv").read_text().splitlines()[1:]]
    best = float(curve[train["best_epoch"] - 1][2])  # the kept epoch's validation loss, as plotted
    assert train["best_val_loss"] == pytest.approx(best, abs=1e-4) and best < float(curve[0][2])
    # scst.epochs 0: data/model is the cross-entropy model, byte for byte
    assert (project / "data/model/model.keras").read_bytes() == (project / "data/model_xe/model.keras").read_bytes()
    assert json.loads((project / "metrics/scst/metrics.json").read_text()) == {"epochs": 0}
    release = sorted(p.name for p in (project / "data/release").iterdir())
    assert release == ["README.md", "decoding.json", "meta.json", "model.keras", "ngrams.npz", "vocab.json"]
    assert json.loads(run(["dvc", "metrics", "show", "--json"], project))  # valid JSON
    assert run(["dvc", "status"], project).strip().endswith("Data and pipelines are up to date.")


@pytest.mark.smoke
def test_a_train_param_reruns_train_and_below_not_the_cnn(workspace, tmp_path: Path) -> None:
    project = clone_workspace(workspace, tmp_path / "proj")
    set_params(project, {"train": {"learning_rate": 0.002, "ensemble": 2}})
    status = run(["dvc", "status"], project)
    assert "train:" in status and "extract_features:" not in status and "clean_text:" not in status
    out = run(["dvc", "repro"], project)
    assert ran_stages(out) == {"train", "scst", "evaluate", "package"}
    assert "Stage 'extract_features' didn't change, skipping" in out
    meta = json.loads((project / "data/model/meta.json").read_text())
    assert meta["members"] == ["model.keras", "model_1.keras"]  # evaluate decoded with both


def test_incremental_reruns(workspace, tmp_path: Path) -> None:
    """Each kind of param change reruns exactly its stages and what depends on them."""
    project = clone_workspace(workspace, tmp_path / "proj")
    set_params(project, {"train": {"ensemble": 2}})
    assert ran_stages(run(["dvc", "repro"], project)) == {"train", "scst", "evaluate", "package"}

    # An evaluate param: only evaluate.
    set_params(project, {"evaluate": {"beam_width": 1}})
    assert ran_stages(run(["dvc", "repro"], project)) == {"evaluate", "package"}

    # Self-critical training: its own stage fine-tunes train's model (train does not rerun);
    # every member gets an SCST history, curves and the dev CIDEr-D before and after.
    set_params(project, {"scst": {"epochs": 1, "samples": 2, "max_length": 6}})
    assert ran_stages(run(["dvc", "repro"], project)) == {"scst", "evaluate", "package"}
    run_info = json.loads((project / "metrics/scst/run.json").read_text())
    scst = run_info["members"]
    assert [h["member"] for h in scst] == [0, 1] and [e["epoch"] for e in scst[0]["epochs"]] == [0, 1]
    assert scst[0]["epochs"][1]["reward"] > 0.0 and run_info["best_epoch"] in (0, 1)
    assert [e["epoch"] for e in run_info["ensemble"]] == [0, 1]  # the ensemble's dev CIDEr-D chose the epoch
    summary = json.loads((project / "metrics/scst/metrics.json").read_text())
    assert summary["epochs"] == 1 and summary["dev_cider"] >= summary["dev_cider_xe"]  # the best epoch is kept
    curve = (project / "metrics/scst/curves/dev_cider.tsv").read_text().splitlines()
    assert curve[0] == "epoch\tmember_0\tmember_1\tensemble" and [r.split("\t")[0] for r in curve[1:]] == ["0", "1"]
    meta = json.loads((project / "data/model/meta.json").read_text())
    assert meta["scst"]["epochs"] == 1 and meta["scst"]["best_epoch"] == run_info["best_epoch"]
    assert (project / "data/model/ngrams.npz").is_file()  # for consensus reranking
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
    assert metrics["coco"]["cider"] > metrics["blind_baseline"]["coco"]["cider"]  # the ensemble learnt
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
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert metrics["coco"]["cider"] > metrics["blind_baseline"]["coco"]["cider"]


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
