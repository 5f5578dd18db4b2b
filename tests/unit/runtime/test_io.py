"""captioner.runtime.io.atomic_path: durability (fsync), a crash between the two renames of a folder,
concurrent writers of one target, leftovers of dead writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from captioner.runtime.io import atomic_path, stale_temporaries


def _inode(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _tree(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root`."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_tree(tmp: Path, files: dict[str, bytes], pause: float = 0.0) -> None:
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
        time.sleep(pause)


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record ("fsync", (dev, inode)) and ("replace", src, dst) in call order."""
    log: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        log.append(("fsync", (st.st_dev, st.st_ino)))
        real_fsync(fd)

    def replace(src, dst) -> None:
        log.append(("replace", Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


@pytest.mark.parametrize("had_old", [False, True])
def test_folder_tree_and_directories_are_fsynced_around_the_rename(tmp_path: Path, events: list[tuple],
                                                                   had_old: bool) -> None:
    target = tmp_path / "out" / "model"
    if had_old:
        _write_tree(target, {"old.bin": b"old"})
    files = {"a.bin": b"a", "sub/b.bin": b"b", "sub/deeper/c.bin": b"c"}
    with atomic_path(target) as tmp:
        tmp.mkdir()
        _write_tree(tmp, files)
        tmp_dir = _inode(tmp.parent)
    assert _tree(target) == files
    into_place = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == target)
    before = {e[1] for e in events[:into_place] if e[0] == "fsync"}
    after = {e[1] for e in events[into_place:] if e[0] == "fsync"}
    written = [target, target / "sub", target / "sub" / "deeper", *(target / n for n in files)]
    assert {_inode(p) for p in written} <= before, "every file and folder of the tree is fsynced first"
    assert tmp_dir in before and tmp_dir in after, "the temporary folder, before and after"
    assert _inode(target.parent) in after, "the parent folder, after the rename"


def test_file_and_directories_are_fsynced_around_the_rename(tmp_path: Path, events: list[tuple]) -> None:
    target = tmp_path / "metrics.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
        tmp_dir = _inode(tmp.parent)
    (into_place,) = [i for i, e in enumerate(events) if e[0] == "replace"]
    before = {e[1] for e in events[:into_place] if e[0] == "fsync"}
    after = {e[1] for e in events[into_place:] if e[0] == "fsync"}
    assert _inode(target) in before and tmp_dir in before
    assert _inode(tmp_path) in after and tmp_dir in after


def test_crash_between_the_two_renames_then_the_next_write_restores_the_old_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model"
    _write_tree(target, {"old.bin": b"old", "sub/x.bin": b"x"})
    old_tree = _tree(target)
    real_replace, calls = os.replace, []

    def dies_on_the_second_rename(src, dst) -> None:
        calls.append((src, dst))
        if len(calls) == 2:
            raise RuntimeError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_on_the_second_rename)
    with pytest.raises(RuntimeError, match="power cut"), atomic_path(target) as tmp:
        _write_tree(tmp, {"new.bin": b"new"})
    monkeypatch.setattr(os, "replace", real_replace)
    assert not target.exists() and _tree(tmp_path / ".model.old") == old_tree  # crashed between them

    with pytest.raises(RuntimeError, match="failed"), atomic_path(target):  # a write that fails...
        assert _tree(target) == old_tree  # ...finds the old folder restored before it starts
        raise RuntimeError("failed")
    assert _tree(target) == old_tree and stale_temporaries(target) == []  # and loses nothing

    with atomic_path(target) as tmp:
        _write_tree(tmp, {"new.bin": b"new"})
    assert _tree(target) == {"new.bin": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_two_concurrent_writers_both_succeed_and_one_complete_output_wins(tmp_path: Path) -> None:
    """The second writer starts while the first is writing (its temporary exists)."""
    target = tmp_path / "data"
    outputs = {w: {f"part-{i}.bin": w.encode() * 100 for i in range(8)} for w in ("first", "second")}
    first_is_writing, errors = threading.Event(), []

    def writer(name: str) -> None:
        try:
            if name == "second":
                first_is_writing.wait(timeout=30)
            with atomic_path(target) as tmp:
                tmp.mkdir()
                first_is_writing.set()
                for file, data in outputs[name].items():  # fails if the temporary is deleted meanwhile
                    (tmp / file).write_bytes(data)
                    time.sleep(0.03)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=writer, args=(name,)) for name in outputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert _tree(target) in list(outputs.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


DIES_MID_WRITE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from captioner.runtime.io import atomic_path
    with atomic_path(Path(sys.argv[1])) as tmp:
        tmp.mkdir()
        (tmp / "half.bin").write_bytes(b"half")
        os._exit(9)  # killed: no finally, no cleanup
""")


def test_leftovers_of_a_dead_writer_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "data"
    _write_tree(target, {"old.bin": b"old"})
    assert subprocess.run([sys.executable, "-c", DIES_MID_WRITE, str(target)]).returncode == 9
    (tmp_path / ".data.old").mkdir()  # and an .old copy left after the second rename of a write
    assert len(stale_temporaries(target)) == 2 and (tmp_path / ".data.lock").exists()
    assert _tree(target) == {"old.bin": b"old"}
    with atomic_path(target) as tmp:
        _write_tree(tmp, {"new.bin": b"new"})
    assert _tree(target) == {"new.bin": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
