"""`make flickr8k MODEL=...` in a copy of the project: the asked preset runs, whatever ran before."""

from __future__ import annotations

import json
import sys
from pathlib import Path


from captioner.config.params import load_params
from tests.helpers.project import copy_project, run

TINY_SET = [
    "scenes.n_images=40", "scenes.image_size=64", "features.batch_size=16", "model.embedding_dim=8",
    "model.units=8", "model.attention_dim=8", "train.epochs=1", "train.batch_size=32",
    "evaluate.beam_width=1", "evaluate.max_length=8", "evaluate.batch_size=16", "evaluate.gallery_size=2",
]



def test_make_flickr8k_runs_the_asked_preset_in_either_order(tmp_path: Path) -> None:
    """`make flickr8k MODEL=...` on the embedded data: attention, then merge, then attention
    again, in one workspace; the model folder says what was trained each time."""
    project = tmp_path / "proj"
    project.mkdir()
    copy_project(project)
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "base"], project)
    bin_dir = Path(sys.executable).parent  # the venv's python, dvc and captioner

    def flickr8k(model: str) -> tuple[dict, str]:
        out = run(["make", "-o", ".venv/.installed", "flickr8k", f"BIN={bin_dir}", f"MODEL={model}",
                   "DATA=data/raw/scenes", "SPLIT=test", f"SET={' '.join(TINY_SET)}"], project)
        meta = json.loads((project / "data/model/meta.json").read_text())
        released = json.loads((project / "data/release/meta.json").read_text())  # what the CLI uses
        assert released["member_kinds"] == meta["member_kinds"] and released["spatial"] == meta["spatial"]
        return meta, out

    meta, out = flickr8k("attention")
    assert meta["member_kinds"] == ["attention", "attention", "merge", "merge"] and meta["spatial"] == "grid"
    assert "presets: flickr8k-attention.yaml: 4 model(s): attention, attention, merge, merge" in out
    meta, out = flickr8k("merge")
    assert meta["member_kinds"] == ["merge"] * 4 and meta["spatial"] == "pooled" and meta["kind"] == "merge"
    assert meta["feature_dim"] == 1280
    assert "precision auto" in out and "differs from HEAD" in out
    params = load_params(project / "params.yaml")  # what the experiment left in the workspace
    assert params.features.dtype == "float32" and params.train.merge_members == 0
    meta, _ = flickr8k("attention")
    assert meta["member_kinds"] == ["attention", "attention", "merge", "merge"] and meta["spatial"] == "grid"
    assert load_params(project / "params.yaml").train.precision == "auto"

