"""Presets give the same experiment whatever an earlier `dvc exp run -S` left in params.yaml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from captioner.config.params import Params, flatten
from captioner.config.presets import apply_preset, committed_params, describe, main, overrides, parse_override
from tests.helpers.project import REPO

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
        *parents, leaf = key.split(".")  # a nested setting: scst.select.beam_width
        target = tree.setdefault(section, {})
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
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
    assert {a.partition("=")[0] for a in args} == set(flatten(Params()))
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



def test_nested_settings_merge_key_by_key_from_preset_and_overrides(workspace: Path, tmp_path: Path) -> None:
    """scst.select is a nested decoding config: a preset naming one of its keys keeps the others,
    a dotted override (`scst.select.beam_width=3`) sets one, and the overrides name each leaf."""
    preset = tmp_path / "p.yaml"
    preset.write_text("scst:\n  select:\n    length_penalty: 1.0\n")
    p = apply_preset(committed_params(workspace / "params.yaml"), preset, ["scst.select.beam_width=3"])
    assert (p.scst.select.beam_width, p.scst.select.length_penalty, p.scst.select.block_repeat_ngram) == (3, 1.0, 2)
    args = overrides(p)
    assert "scst.select.beam_width=3" in args and "scst.select.length_penalty=1.0" in args
    assert as_params(args) == p
