"""Shards of an unfinished extraction: every finished batch persisted as a small Parquet file
(atomically, no pickle) under ``<feature file stem>.partial/<key>/``, so that a rerun reads back
the batches whose images are unchanged instead of recomputing them, and the feature file is then
written from the shards one batch at a time."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from captioner.features.store import feature_matrix
from captioner.runtime.io import atomic_path

if TYPE_CHECKING:
    from captioner.features.backbones import Backbone

__all__ = ["BatchResult", "extraction_key", "file_stamp", "partial_dir", "read_shard", "shard_features",
           "shard_key", "shard_path", "write_shard"]

SHARD_FORMAT = "captioner-feature-shard/1"


def file_stamp(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(size, mtime in ns) of a file, (-1, -1) if it cannot be stat'ed: a changed file changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def extraction_key(paths: Sequence[str | os.PathLike[str]], config: Mapping[str, Any]) -> str:
    """Short hash naming the shard folder of one extraction: the image list and `config`
    (backbone, weights, input size, batch size, code and library versions...)."""
    h = hashlib.sha256(json.dumps(dict(config), sort_keys=True, default=str).encode())
    for p in paths:
        h.update(b"\0" + os.fsencode(p))
    return h.hexdigest()[:16]


def shard_path(folder: Path, batch: int) -> Path:
    """Where batch number `batch` of a run is persisted."""
    return folder / f"batch-{batch:06d}.parquet"


def write_shard(path: Path, result: BatchResult) -> None:
    """Persist one finished batch atomically (Parquet, no pickle)."""
    dim = result.features.shape[1]
    table = pa.table(
        {
            "path": pa.array(result.paths, pa.string()),
            "size": pa.array([s for s, _ in result.stamps], pa.int64()),
            "mtime_ns": pa.array([m for _, m in result.stamps], pa.int64()),
            "feature": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(result.features, np.float32).reshape(-1)), dim
            ),
            "problem": pa.array(result.problems, pa.string()),
            "notes": pa.array([list(n) for n in result.notes], pa.list_(pa.string())),
        }
    ).replace_schema_metadata({"format": SHARD_FORMAT})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_shard(path: Path, paths: Sequence[str], dim: int) -> BatchResult | None:
    """The persisted batch at `path` if it is for exactly `paths`, with unchanged files and
    `dim`-d features; None (recompute it) if it is absent, unreadable or stale."""
    try:
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        if meta.get(b"format") != SHARD_FORMAT.encode() or table.column("path").to_pylist() != list(paths):
            return None
        feat = table.column("feature").combine_chunks()
        if feat.type.list_size != dim:
            return None
        stamps = list(zip(table.column("size").to_pylist(), table.column("mtime_ns").to_pylist()))
        if stamps != [file_stamp(p) for p in paths]:
            return None
        features = feat.flatten().to_numpy(zero_copy_only=False).reshape(len(paths), dim)
        return BatchResult(
            list(paths), stamps, np.array(features, np.float32),
            table.column("problem").to_pylist(), [tuple(n) for n in table.column("notes").to_pylist()],
        )
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def partial_dir(features_path: str | os.PathLike[str]) -> Path:
    """Folder for the shards of interrupted runs beside a feature file: ``x.parquet`` -> ``x.partial``.

    Not a DVC output, so `dvc repro` leaves it in place between a killed run and the rerun.
    """
    p = Path(features_path)
    return p.with_name(f"{p.stem}.partial")


def shard_features(folder: str | os.PathLike[str], batches: int, ok: Sequence[bool] | np.ndarray,
                   batch_size: int) -> Iterator[np.ndarray]:
    """The features of the images that loaded (`ok`), batch by batch, read back from the shards
    that :func:`extract` wrote into `folder`: one batch in memory at a time."""
    ok = np.asarray(ok, bool)
    for i in range(batches):
        path = shard_path(Path(folder), i)
        column = pq.read_table(path, columns=["feature"]).column("feature")
        feats = feature_matrix(column, column.type.list_size, path)  # failed images: NaN rows
        yield feats[ok[i * batch_size : i * batch_size + len(feats)]]


@dataclass(frozen=True)
class BatchResult:
    """One batch's outcome, as persisted in a shard: per image its path, file stamp, feature
    row (NaN if it failed), problem (None if it loaded) and conversion notes."""

    paths: list[str]
    stamps: list[tuple[int, int]]
    features: np.ndarray
    problems: list[str | None]
    notes: list[tuple[str, ...]]



LIBRARIES = ("numpy", "PIL", "keras", "tensorflow")  # their versions key the shards too


def code_digest(files: Sequence[Path]) -> str:
    """Hash of the source files that decide the features (a code change must not resume)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def shard_key(paths: Sequence[str | os.PathLike[str]], backbone: Backbone, weights: str, batch_size: int,
              threads: int) -> str:
    """The shard folder's name for extracting `paths`: a hash of the image list and of everything
    else the features depend on (backbone, weights file, batch size, thread count, the features
    code, library versions), so a rerun resumes only an identical extraction."""
    import importlib

    here = Path(__file__).parent  # captioner/features: images, extract, shards, store, backbones/
    code = [*here.glob("*.py"), *(here / "backbones").glob("*.py")]
    config = {
        "backbone": backbone.name, "weights": weights, "weights_file": file_stamp(weights),
        "input_size": backbone.input_size, "feature_dim": backbone.feature_dim, "batch_size": batch_size,
        "grid": backbone.grid, "threads": threads,
        "code": code_digest(code),
        "versions": {m: getattr(importlib.import_module(m), "__version__", "?") for m in LIBRARIES},
    }
    return extraction_key(paths, config)
