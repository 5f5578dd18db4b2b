"""Resumable training: every ensemble member's whole state after each finished epoch, so that a
stage killed at any moment (a reboot, SIGKILL, Ctrl-C) continues where it was, bit for bit.

A stage's checkpoints live in ``<output>.partial/`` beside its output folder (``data/model_xe``
-> ``data/model_xe.partial``): not a DVC output, so `dvc repro` leaves it in place between a
killed run and the rerun (as extraction's shards), and removed once the output is written::

    fingerprint.json   what the checkpoints were made with: params, inputs' hashes, code, versions
    member-<i>.npz     member i's state after its last finished epoch, or its final weights once done

Each ``.npz`` holds arrays (``model/<k>``, ``optimizer/<k>``, ``best/<k>``, ``final/<k>``) and one
JSON document (``meta``: epoch, history, callback and RNG states), written atomically and fsynced
(captioner.runtime.io), so a kill leaves the previous epoch's checkpoint or the new one. A
checkpoint folder whose fingerprint differs from the run's (other params, inputs or code) is
discarded with a line saying what differs, never mixed in.

Keras' ``BackupAndRestore`` keeps the weights and the epoch number only; a resume that is
bit-identical also needs the optimizer's moments, early stopping's best weights and patience,
the learning-rate plateau's counters and the data order's generator, hence this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captioner.runtime.io import atomic_path, write_json

__all__ = ["CheckpointFolder", "MemberState", "checkpoint_dir", "code_digest", "differences", "file_digest",
           "fingerprint", "resume_hint"]

FORMAT = "captioner-checkpoint/1"


def checkpoint_dir(output: str | os.PathLike[str]) -> Path:
    """Where a stage writing `output` keeps its checkpoints: ``data/model_xe`` -> ``data/model_xe.partial``."""
    p = Path(output)
    return p.with_name(f"{p.name}.partial")


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, sorted)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        h.update(os.fsencode(q.relative_to(p) if p.is_dir() else q.name) + b"\0")
        with open(q, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def code_digest() -> str:
    """sha256 of the Python sources a training stage can run: the captioner package but `app/`
    (the CLI, service and export sit above training and engines, and no core module may import
    them: tests/unit/project/test_layers.py). Any change there makes new checkpoints."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for q in sorted(q for q in root.rglob("*.py") if q.relative_to(root).parts[0] != "app"):
        h.update(os.fsencode(q.relative_to(root)) + b"\0" + q.read_bytes())
    return h.hexdigest()


def fingerprint(params: Mapping[str, Any], inputs: Mapping[str, str | os.PathLike[str]]) -> dict:
    """What a stage's checkpoints are valid for: its `params` (JSON-able), the sha256 of each of
    its `inputs` (name -> file or folder), the package's code and the numeric libraries' versions."""
    import keras
    import tensorflow as tf

    return {
        "format": FORMAT,
        "params": json.loads(json.dumps(params, sort_keys=True, default=str)),
        "inputs": {name: file_digest(path) for name, path in sorted(inputs.items())},
        "code": code_digest(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__},
    }


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted names that differ between two fingerprints (``params.train.epochs``, ``code``...)."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


@dataclass
class MemberState:
    """One member's checkpoint. `epoch`: epochs finished; `arrays`: groups of arrays by name
    ("model", "optimizer", "best", "final"); `meta`: JSON-able states; `done`: the member is
    finished and "final" holds its weights."""

    epoch: int
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    done: bool = False


class CheckpointFolder:
    """The checkpoints of one stage run (see the module's docstring)."""

    def __init__(self, root: Path, stage: str) -> None:
        self.root, self.stage = root, stage

    @classmethod
    def open(cls, root: str | os.PathLike[str], stage: str, stamp: Mapping[str, Any],
             log: Callable[[str], None] = print) -> CheckpointFolder:
        """The folder for a run whose :func:`fingerprint` is `stamp`: an existing one made with
        another is discarded (`log` says what differed), a missing one made."""
        root = Path(root)
        stamp_file = root / "fingerprint.json"
        stamp = json.loads(json.dumps(stamp))
        if root.exists():
            try:
                old = json.loads(stamp_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old != stamp:
                if any(root.glob("member-*.npz")):
                    what = ", ".join(differences(old, stamp)[:6]) if isinstance(old, dict) else "an unreadable fingerprint"
                    log(f"{stage}: discarding the checkpoints in {root}, made with another {what}")
                shutil.rmtree(root)
        if not root.exists():
            root.mkdir(parents=True)
            write_json(stamp_file, stamp)
        return cls(root, stage)

    @classmethod
    def for_stage(cls, stage: str, out: str | os.PathLike[str], params: Mapping[str, Any],
                  inputs: Mapping[str, str | os.PathLike[str]], epochs: int, members: int,
                  log: Callable[[str], None] = print) -> CheckpointFolder:
        """The checkpoints of the stage writing `out` (:func:`checkpoint_dir`) for this run's
        `params` and `inputs` (:func:`fingerprint`); `log` says what will be resumed, if anything."""
        folder = cls.open(checkpoint_dir(out), stage, fingerprint(params, inputs), log)
        if resumed := folder.describe(epochs, members):
            log(f"{stage}: {resumed}")
        return folder

    def path(self, member: int) -> Path:
        return self.root / f"member-{member}.npz"

    def load(self, member: int) -> MemberState | None:
        """Member `member`'s checkpoint, or None if it has none; a damaged one is an error naming it."""
        path = self.path(member)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                groups: dict[str, list[tuple[int, np.ndarray]]] = {}
                for key in z.files:
                    if key != "meta":
                        group, index = key.rsplit("/", 1)
                        groups.setdefault(group, []).append((int(index), z[key]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: unreadable checkpoint ({e}); delete it to start this member afresh") from e
        arrays = {g: [a for _, a in sorted(items, key=lambda t: t[0])] for g, items in groups.items()}
        return MemberState(int(meta.pop("epoch")), arrays, meta, bool(meta.pop("done")))

    def save(self, member: int, state: MemberState) -> None:
        """Write member `member`'s checkpoint durably, replacing the previous one."""
        payload = {f"{g}/{i}": np.asarray(a) for g, arrays in state.arrays.items() for i, a in enumerate(arrays)}
        meta = json.dumps({**state.meta, "epoch": state.epoch, "done": state.done})
        with atomic_path(self.path(member)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(meta), **payload)

    def describe(self, epochs: int, members: int, together: bool = False) -> str | None:
        """What a resumed run does (``member 2 of 4 resumes at epoch 9 of 20; member 1 of 4 already
        finished``), None when there is nothing to resume. `together`: the members run each epoch
        side by side (SCST), so the run resumes at the epoch after the one all members finished
        (``epoch 3 of 5 resumes``; ``all members finished``)."""
        if together:
            states = [self.load(m) for m in range(members)]
            if any(s is None for s in states):
                return None
            if all(s.done for s in states):
                return "all members finished"
            return f"resumes at epoch {min(s.epoch for s in states) + 1} of {epochs}"
        done, running = [], None
        for m in range(members):
            state = self.load(m)
            if state is None:
                continue
            if state.done:
                done.append(m + 1)
            elif running is None:
                running = (m + 1, state.epoch)
        if not done and running is None:
            return None
        parts = []
        if running:
            parts.append(f"member {running[0]} of {members} resumes at epoch {running[1] + 1} of {epochs}")
        if done:
            parts.append(f"member{'s' if len(done) > 1 else ''} {', '.join(map(str, done))} of {members} "
                         f"already finished")
        return "; ".join(parts)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def resume_hint(folder: CheckpointFolder, epochs: int, members: int, together: bool = False) -> Iterator[None]:
    """On Ctrl-C or SIGTERM (SystemExit, captioner.runtime.stage), one line on stderr saying
    what the next `dvc repro` resumes (:meth:`CheckpointFolder.describe`); the interruption then goes on."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        where = folder.describe(epochs, members, together) or "no epoch had finished, it starts afresh"
        print(f"{folder.stage}: stopped; the next `dvc repro` resumes from {folder.root}: {where}", file=sys.stderr)
        raise
