"""Presets give the same experiment whatever an earlier `dvc exp run -S` left in params.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from captioner.config.params import Params, flatten, load_params
from captioner.config.presets import apply_preset, committed_params, describe, main, overrides, parse_override
from tests.test_pipeline import copy_project, run

REPO = Path(__file__).resolve().parents[1]
MERGE, ATTENTION = REPO / "presets/flickr8k.yaml", REPO / "presets/flickr8k-attention.yaml"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A git repo whose committed params.yaml is the project's; the workspace copy holds the
    leftovers of an attention run (what `dvc exp run -S` leaves behind)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "params.yaml"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "p"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    leftovers = yaml.safe_load((tmp_path / "params.yaml").read_text())
    leftovers["features"].update(spatial="grid", dtype="float16")
    leftovers["model"]["kind"] = "attention"
    leftovers["train"].update(merge_members=2, ensemble=4, precision="mixed_bfloat16", epochs=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(leftovers))
    return tmp_path


def as_params(args: list[str]) -> Params:
    """What params.yaml holds after `dvc exp run` applies these `key=value` overrides to it."""
    tree: dict = {}
    for a in args:
        section, key, value = parse_override(a)
        tree.setdefault(section, {})[key] = value
    return Params.model_validate(tree)


def test_base_is_the_committed_params_not_the_workspace(workspace: Path) -> None:
    assert committed_params(workspace / "params.yaml") == yaml.safe_load((REPO / "params.yaml").read_text())
    assert committed_params(workspace / "params.yaml")["model"]["kind"] == "merge"


def test_merge_preset_after_an_attention_run_is_the_merge_preset(workspace: Path) -> None:
    p = apply_preset(committed_params(workspace / "params.yaml"), MERGE, ["data.root=../f8k"])
    assert (p.model.kind, p.features.spatial, p.features.dtype, p.train.merge_members) == \
        ("merge", "pooled", "float32", 0)
    assert p.train.epochs == 12 and p.train.precision == "auto" and p.data.root == "../f8k"
    # the overrides set every key, so nothing of the workspace's leftovers survives them
    args = overrides(p)
    assert {a.partition("=")[0] for a in args} == set(flatten(Params().model_dump()))
    assert as_params(args) == p


def test_attention_preset_does_not_inherit_bfloat16_from_a_merge_run(workspace: Path) -> None:
    p = apply_preset(committed_params(workspace / "params.yaml"), ATTENTION)  # workspace: mixed_bfloat16
    assert p.model.kind == "attention" and p.train.precision == "auto" and p.train.epochs == 20
    assert describe(p).startswith("4 model(s): attention, attention, merge, merge; features "
                                  "efficientnet_lite0 7x7 region grid (float16); precision auto")


def test_cli_prints_arguments_and_what_will_run(workspace: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(workspace)
    main([str(MERGE), "-S", "evaluate.split=test", "-S", "scenes.split_fractions={train: 0.5, dev: 0.5}"])
    out, err = capsys.readouterr()
    assert "differs from HEAD" in err and "4 model(s): merge, merge, merge, merge" in err
    assert "-S model.kind=merge" in out and "-S evaluate.split=test" in out
    assert "-S 'scenes.split_fractions={dev: 0.5, train: 0.5}'" in out
    with pytest.raises(SystemExit, match="train.epochs"):
        main([str(MERGE), "-S", "train.epochs=0"])
    with pytest.raises(SystemExit, match="expected section.key=value"):
        main([str(MERGE), "-S", "epochs=3"])


# ------------------------------------------------------------------ make flickr8k, end to end

TINY_SET = [
    "scenes.n_images=40", "scenes.image_size=64", "features.batch_size=16", "model.embedding_dim=8",
    "model.units=8", "model.attention_dim=8", "train.epochs=1", "train.batch_size=32",
    "evaluate.beam_width=1", "evaluate.max_length=8", "evaluate.batch_size=16", "evaluate.gallery_size=2",
]


@pytest.mark.slow
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
