"""Every stage of dvc.yaml depends on all the project code it runs.

A project module that a stage imports but does not list as a dep lets `dvc repro` call stale
metrics "up to date" after a change there. Two views of "the code a stage runs", both checked:
- static: every `captioner...` import in the stage script, followed through the package,
  including imports inside functions (the lazy ones that a plain import would miss);
- dynamic: the `captioner` modules actually in `sys.modules` after importing the stage script
  in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
SRC = REPO / "src"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


STAGE_HELPER = "_stage"  # stages/_stage.py, imported first by every stage script


def module_file(name: str) -> Path | None:
    """`captioner.a.b` -> its source file under src/ (package -> __init__.py), `_stage` ->
    stages/_stage.py, or None."""
    if name == STAGE_HELPER:
        return REPO / "stages" / "_stage.py"
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, package: str | None) -> set[str]:
    """Project modules named by the import statements of one file, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                assert package, f"{path}: relative import outside a package"
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{parent}.{node.module}" if node.module else parent
            else:
                mod = node.module or ""
            # `from pkg import sub` may name a submodule as well as an attribute
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == STAGE_HELPER:
                found.add(name)
            elif name == "captioner" or name.startswith("captioner."):
                parts = name.split(".")
                # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in found if module_file(m)}


def static_closure(script: Path) -> set[Path]:
    """Source files of every project module reachable from `script` by import statements."""
    todo = list(imported_modules(script, None))
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        f = module_file(mod)
        assert f is not None
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        todo.extend(imported_modules(f, package) - seen)
    return {module_file(m) for m in seen}  # type: ignore[misc]


def dynamic_closure(script: Path) -> set[Path]:
    """Source files of the project modules loaded by importing `script` in a fresh interpreter."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('stage_under_test', {str(script)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()\n"
        "    if (n == 'captioner' or n.startswith('captioner.')) and getattr(m, '__file__', None))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(script.parent)})
    assert out.returncode == 0, out.stderr
    return {Path(f).resolve() for f in json.loads(out.stdout.strip().splitlines()[-1])}


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.resolve().relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def stage_script(stage: dict) -> Path:
    words = stage["cmd"].split()
    return REPO / words[words.index("python") + 1]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_all_project_code_it_imports(name: str) -> None:
    stage = STAGES[name]
    script = stage_script(stage)
    deps = [d for d in stage["deps"] if not d.startswith("${")]
    assert covered(script, deps), f"{name}: its own script {script.name} is not a dep"
    code = static_closure(script) | dynamic_closure(script)
    assert any(p.name != "__init__.py" for p in code), f"{name}: found no project code (test is broken)"
    missing = sorted(p.relative_to(REPO).as_posix() for p in code if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} imports code it does not depend on: {missing}"


def test_the_check_sees_a_missing_dep() -> None:
    """The closure really reaches through the package: evaluate reads text.py (references)."""
    code = {p.relative_to(REPO).as_posix() for p in static_closure(stage_script(STAGES["evaluate"]))}
    assert {"src/captioner/datasets/text.py", "src/captioner/model/build.py", "src/captioner/__init__.py"} <= code
    deps = [d for d in STAGES["evaluate"]["deps"] if d != "src/captioner/datasets/text.py"
            and not d.startswith("${") and d not in ("src/captioner", "src/captioner/")]
    assert not covered(SRC / "captioner/text.py", deps)
