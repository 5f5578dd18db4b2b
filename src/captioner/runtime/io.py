"""Durable atomic artifact writes: every output goes to a temporary path beside it, is fsynced,
then moved into place with `os.replace`, and the directory entries are fsynced too.

A run killed at any moment, or a power loss, leaves either the old artifact or the new one,
never a half-written one. Replacing a folder takes two renames (target -> ``.name.old``,
temporary -> target); a run that dies between them leaves only ``.name.old``, and the next
write of the same target restores it before anything else (readers may see the target missing
until then, never a partial one). Writers of one target take turns on an exclusive `flock` of
``.name.lock`` beside it (removed when the write ends), so concurrent writers never see or
delete each other's temporaries; whatever a killed writer left is removed by the next write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "fsync_path", "fsync_tree", "read_json", "stale_temporaries", "write_json"]


def stale_temporaries(target: Path) -> list[Path]:
    """Leftovers of killed writes of `target`: its `atomic_path` temporaries and `.old` copy
    (all of them stale unless a write of `target` is running right now)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[A-Za-z0-9_]{{8}}\.tmp|\.{re.escape(target.name)}\.old")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


def fsync_path(path: Path) -> None:
    """fsync one file or directory (opened read-only, which Linux and macOS allow)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync `root` and, for a folder, every regular file and folder under it (links not
    followed: a link itself is saved with the folder holding it)."""
    if root.is_symlink():
        return
    if not root.is_dir():
        fsync_path(root)
        return
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if stat.S_ISREG(os.lstat(p := Path(dirpath, name)).st_mode):
                fsync_path(p)
        fsync_path(Path(dirpath))


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on `.<name>.lock` beside `target`; delete the lock file on exit.

    The file is deleted while still locked, so a waiter may end up holding a lock on a deleted
    file: it checks that the file it locked is still the one at the path, and retries if not.
    """
    lock = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(lock)):
                    break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a file or folder, ignoring errors (a leftover is retried by the next write)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _recover(target: Path) -> None:
    """Restore the `.old` copy of a write that died between its two renames, then delete
    every other leftover of killed writes (the lock on `target` must be held)."""
    old = target.parent / f".{target.name}.old"
    if os.path.lexists(old) and not os.path.lexists(target):
        os.replace(old, target)
        fsync_path(target.parent)
    for stale in stale_temporaries(target):
        _remove(stale)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it into place durably, else remove it.

    Works for files and for directories (the caller creates whichever it needs at the
    yielded path). An existing directory at `path` is replaced as a whole. Writes of one
    `path` are serialised (the second waits); they must not be nested.
    """
    target = Path(path)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        _recover(target)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        tmp = tmp_dir / target.name
        try:
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(f"nothing was written to the temporary path for {target}")
            fsync_tree(tmp)
            fsync_path(tmp_dir)
            old = parent / f".{target.name}.old"
            swap = tmp.is_dir() and os.path.lexists(target)
            if swap:
                os.replace(target, old)
            os.replace(tmp, target)
            fsync_path(parent)
            fsync_path(tmp_dir)  # the rename changed both folders
            if swap:
                _remove(old)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)


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
