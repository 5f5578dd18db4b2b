"""Presets: named experiments as complete, reproducible `dvc exp run -S` override sets.

A preset file (`presets/*.yaml`) lists only what it changes. It is applied on top of the
**committed** `params.yaml` (`git show HEAD:params.yaml`), never on top of the workspace file:
`dvc exp run -S` writes its overrides into the workspace's params.yaml and leaves them there,
so a preset applied on top of the workspace would inherit whatever the previous run left
behind. The overrides name every key of every section, so the experiment is the same whatever
the workspace holds.

`python -m captioner.config.presets PRESET [-S key=value ...]` prints the `-S` arguments for
`dvc exp run` on stdout and one line on stderr saying what will run.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from captioner.config.params import Params, ParamsError, flatten

__all__ = [
    "apply_preset", "committed_params", "describe", "main", "member_kinds", "overrides", "parse_override",
]


def committed_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """params.yaml as committed at HEAD (the workspace file if git has no commit or no such file)."""
    p = Path(path)
    proc = subprocess.run(["git", "show", f"HEAD:./{p.name}"], cwd=p.resolve().parent,
                          capture_output=True, text=True)
    text = proc.stdout if proc.returncode == 0 else p.read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` (value in YAML, as `dvc exp run -S` reads it) -> (section, key, value);
    the key may be dotted, for a nested setting (`scst.select.beam_width=3`)."""
    name, sep, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ParamsError(f"override {text!r}: expected section.key=value")
    return section, key, yaml.safe_load(value)


def apply_preset(base: dict[str, Any], preset_path: str | Path, extra: list[str] = ()) -> Params:
    """`base` params + the preset file + `extra` overrides, validated as a whole."""
    preset = yaml.safe_load(Path(preset_path).read_text(encoding="utf-8")) or {}
    if not isinstance(preset, dict) or not all(isinstance(v, dict) for v in preset.values()):
        raise ParamsError(f"{preset_path}: a preset is a mapping of sections to mappings of keys")
    def merge(into: dict, values: dict) -> None:  # nested settings (scst.select) merge key by key
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into.setdefault(k, {}), v)
            else:
                into[k] = v

    merged = {section: copy.deepcopy(values) for section, values in base.items()}
    for section, values in preset.items():
        merge(merged.setdefault(section, {}), values)
    for override in extra:
        section, key, value = parse_override(override)
        *parents, leaf = key.split(".")
        target = merged.setdefault(section, {})
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    try:
        return Params.model_validate(merged)
    except ValidationError as e:
        raise ParamsError(f"{preset_path}: invalid preset\n{e}") from None


def overrides(params: Params) -> list[str]:
    """Every key of every section as `key=value` (flow-style YAML values)."""
    def fmt(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()

    return [f"{k}={fmt(v)}" for k, v in flatten(params).items()]


def member_kinds(params: Params) -> list[str]:
    """Model kind of each ensemble member, as the train stage builds them."""
    t = params.train
    return [params.model.kind] * (t.ensemble - t.merge_members) + ["merge"] * t.merge_members


def describe(params: Params) -> str:
    """One line: what a run with these params trains, on which features, in which precision."""
    f, t = params.features, params.train
    kinds = member_kinds(params)
    layout = "7x7 region grid" if f.spatial == "grid" else "pooled vectors"
    return (f"{len(kinds)} model(s): {', '.join(kinds)}; features {f.backbone} {layout} ({f.dtype}); "
            f"precision {t.precision}; {t.epochs} epochs; data {params.data.root}, "
            f"scored on {params.evaluate.split} (beam {params.evaluate.beam_width})")


def main(argv: list[str] | None = None) -> None:
    """Print a preset's complete `-S` arguments for `dvc exp run` (stdout) and what will run (stderr)."""
    import argparse
    import shlex

    ap = argparse.ArgumentParser(prog="python -m captioner.config.presets", description=main.__doc__)
    ap.add_argument("preset", help="a presets/*.yaml file")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra override on top of the preset (e.g. data.root=...)")
    ap.add_argument("--params", default="params.yaml", help="the params file whose HEAD version is the base")
    args = ap.parse_args(argv)
    try:
        base = committed_params(args.params)
        params = apply_preset(base, args.preset, args.set)
    except (ParamsError, OSError) as e:
        raise SystemExit(f"presets: error: {e}") from None
    workspace = yaml.safe_load(Path(args.params).read_text(encoding="utf-8")) or {}
    if workspace != base:
        print(f"presets: note: {args.params} differs from HEAD (earlier -S overrides?); "
              f"{args.preset} is applied on top of the committed one", file=sys.stderr)
    print(f"presets: {Path(args.preset).name}: {describe(params)}", file=sys.stderr)
    print(" ".join(f"-S {shlex.quote(o)}" for o in overrides(params)))


if __name__ == "__main__":
    main()
