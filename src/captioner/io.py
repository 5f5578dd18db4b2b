"""Atomic artifact writes: every output goes to a temporary path beside it, then `os.replace`.

A run killed at any moment leaves either the old artifact or none, never a half-written one.
Temporaries of a run killed by SIGKILL are removed by the next successful write of the same
artifact; `exit_on_sigterm` makes SIGTERM unwind (and clean up) like Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any


def stale_temporaries(target: Path) -> list[Path]:
    """Leftovers of killed writes of `target`: its `atomic_path` temporaries and `.old` copy."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[A-Za-z0-9_]{{8}}\.tmp|\.{re.escape(target.name)}\.old")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it into place, else remove it.

    Works for files and for directories (the caller creates whichever it needs at the
    yielded path). An existing directory at `path` is replaced as a whole.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp = tmp_dir / target.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary path for {target}")
        if tmp.is_dir() and target.exists():
            old = target.parent / f".{target.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        for stale in stale_temporaries(target):
            if stale != tmp_dir:
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit in the main thread, so `finally` blocks (and the removal
    of temporaries) run, as they do for Ctrl-C; Python's default is to die on the spot."""
    signal.signal(signal.SIGTERM, _raise_exit)


@contextlib.contextmanager
def reported_errors(
    stage: str, kinds: tuple[type[BaseException], ...] = (ValueError, OSError)
) -> Iterator[None]:
    """Exit with one line ``<stage>: error: <message>`` (status 1) on `kinds` of errors.

    The pipeline's errors name the file or key and the problem, so the traceback is noise to
    a user; set ``CAPTIONER_TRACEBACK=1`` to get it anyway.
    """
    try:
        yield
    except kinds as e:
        if os.environ.get("CAPTIONER_TRACEBACK"):
            raise
        raise SystemExit(f"{stage}: error: {e}\n(set CAPTIONER_TRACEBACK=1 for the traceback)") from None


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as pretty JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, naming the file in the error if it is not valid JSON."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e
