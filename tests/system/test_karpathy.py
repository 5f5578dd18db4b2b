"""The whole DAG up to evaluate on a small copy of Karpathy's dataset_coco.json (sub-folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.helpers.datasets import EXPECTED, MAX_BAD, write_karpathy
from tests.helpers.project import TINY, copy_project, ran_stages, run, set_params

def test_dag_on_a_coco_copy(tmp_path: Path) -> None:
    """The whole DAG up to evaluate on a small dataset_coco.json copy with sub-folders."""
    data_root = tmp_path / "coco"
    write_karpathy(data_root, "coco")
    project = tmp_path / "proj"
    project.mkdir()
    copy_project(project)
    set_params(project, {
        **TINY,
        "data": {"root": str(data_root), "max_bad_fraction": MAX_BAD},
        "features": {**TINY["features"], "weights": "none"},  # random CNN: the data path is under test
        "train": {**TINY["train"], "epochs": 1},
        "evaluate": {"split": "dev", "beam_width": 1, "batch_size": 8},
    })
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "coco copy"], project)
    out = run(["dvc", "repro", "evaluate"], project)
    assert ran_stages(out) == {"clean_text", "extract_features", "build_sequences", "train", "scst",
                               "human_ceiling", "evaluate"}
    report = json.loads((project / "data/text/report.json").read_text())
    assert report["reader"]["variant"] == "coco" and report["images"] == EXPECTED
    assert report["reader"]["ignored"]["malformed_entry"] == 1
    images = pd.read_parquet(project / "data/text/images.parquet")
    assert {Path(p).parent.name for p in images["path"]} == {"train2014", "val2014"}
    features = pd.read_parquet(project / "data/features/efficientnet_lite0.parquet")
    assert sorted(features["image_id"]) == sorted(images["image_id"])  # keyed by the COCO file stem
    feat_report = json.loads((project / "data/features/efficientnet_lite0.report.json").read_text())
    assert feat_report["missing_on_disk"] == 1
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert 0.0 <= metrics["bleu4"] <= metrics["bleu1"] <= 1.0
    run_info = json.loads((project / "metrics/eval_run.json").read_text())
    assert run_info["split"] == "dev" and run_info["images"] == EXPECTED["dev"]

