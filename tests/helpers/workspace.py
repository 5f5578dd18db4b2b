"""The reproduced tiny workspace: a copy of the project on a tiny generated data set (`TINY`),
committed to git and reproduced with `dvc repro` once per test run, then copied into each system
test that starts from a reproduced DAG (as DVC's own suite builds its test repository once).

Under pytest-xdist every worker asks for it; the first builds it under a file lock in the
run's shared temporary folder, the others wait and reuse it. A test never changes the shared
copy: `clone_workspace` gives it its own (the DVC cache's files hard-linked, since DVC never
writes a cached file in place; everything else copied).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from tests.helpers.project import TINY, copy_project, run, set_params

__all__ = ["Workspace", "clone_workspace", "tiny_workspace"]


@dataclass(frozen=True)
class Workspace:
    """A reproduced project folder and what its first `dvc repro` printed."""

    path: Path
    repro_log: str


def _build(path: Path) -> str:
    path.mkdir(parents=True)
    copy_project(path)
    set_params(path, TINY)
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "tiny project"], path)
    log = run(["dvc", "repro"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "reproduced"], path)
    return log


def tiny_workspace(shared_tmp: Path) -> Workspace:
    """The reproduced tiny workspace in `shared_tmp` (built on first use, then reused)."""
    path, log_file = shared_tmp / "tiny-workspace", shared_tmp / "tiny-workspace.log"
    with FileLock(str(shared_tmp / "tiny-workspace.lock")):
        if not log_file.is_file():
            shutil.rmtree(path, ignore_errors=True)  # a build that died half-way
            log_file.write_text(_build(path), encoding="utf-8")
    return Workspace(path, log_file.read_text(encoding="utf-8"))


def clone_workspace(workspace: Workspace, dst: Path) -> Path:
    """A private copy of the reproduced workspace at `dst` (its DVC cache hard-linked)."""
    cache = workspace.path / ".dvc" / "cache"

    def copy(src: str, target: str) -> None:
        if Path(src).is_relative_to(cache):
            os.link(src, target)
        else:
            shutil.copy2(src, target)

    shutil.copytree(workspace.path, dst, symlinks=True, copy_function=copy,
                    ignore=shutil.ignore_patterns("tmp"))  # .dvc/tmp: DVC's per-repo locks and state
    return dst
