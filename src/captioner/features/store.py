"""The Parquet feature file: the one writer and the one reader of `data/features/<backbone>.parquet`.

Layout: columns ``image_id`` (string) and ``feature`` (fixed_size_list<float32 or float16>[D]),
row groups of about 16 MB (the unit that training streams); the schema metadata holds
``backbone``, ``weights``, ``feature_dim`` and, for a region grid (the attention decoder's
input, stored flattened: D = regions * channels), ``spatial: grid``, ``regions`` and
``channels`` (:func:`feature_metadata` builds them, :class:`FeatureFile` reads them back).

`FeatureFile.open` reads the image ids and the schema only; features come from
`read_groups` (whole row groups, in the stored dtype) or `gather` (any rows, reading only the
groups that hold them, one at a time). Memory then follows what a caller asks for, never the
file's size: a COCO grid file (123,287 images x 49 x 1280, 15 GB as float16) is read in windows.
A `FeatureFile` pickles as its path and metadata (a Ray task reopens the file itself).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from captioner.runtime.io import atomic_path

__all__ = [
    "FEATURE_DTYPES", "ROW_GROUP_BYTES", "FeatureFile", "check_schema", "feature_matrix", "feature_metadata",
    "read_features", "report_path", "schema_metadata", "write_feature_blocks", "write_features",
]

COLUMNS = ("image_id", "feature")
FEATURE_DTYPES = ("float32", "float16")
ROW_GROUP_BYTES = 16 << 20  # row groups of about this size (as float32): the unit of streamed reads


def feature_metadata(backbone: str, weights: str, feature_dim: int,
                     grid: tuple[int, int] | None = None) -> dict[str, str | int]:
    """The schema metadata of a feature file: the backbone that made it, its weights and
    width; a grid file also says how to unflatten it (regions x channels)."""
    out: dict[str, str | int] = {"backbone": backbone, "weights": weights, "feature_dim": feature_dim}
    if grid:
        out.update({"spatial": "grid", "regions": grid[0], "channels": grid[1]})
    return out


def check_schema(path: Path, schema: pa.Schema) -> int:
    """The feature dimension D of a valid feature file's schema; ValueError naming the file otherwise."""
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {schema.names}")
    ftype, itype = schema.field("feature").type, schema.field("image_id").type
    if not (pa.types.is_fixed_size_list(ftype) and ftype.value_type in (pa.float32(), pa.float16())):
        raise ValueError(f"{path}: column 'feature' is {ftype}, expected fixed_size_list<float32 or float16>")
    if not pa.types.is_string(itype):
        raise ValueError(f"{path}: column 'image_id' is {itype}, expected string")
    return int(ftype.list_size)


def schema_metadata(schema: pa.Schema) -> dict[str, str]:
    """The schema's key/value metadata as strings (backbone, feature_dim, spatial, ...)."""
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def feature_matrix(column: pa.ChunkedArray | pa.Array, dim: int, where: Path) -> np.ndarray:
    """(rows, dim) numpy view (or copy) of a fixed_size_list feature column; nulls are an error."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = col.flatten()
    if col.null_count or values.null_count:
        raise ValueError(f"{where}: null features")
    return values.to_numpy(zero_copy_only=False).reshape(len(col), dim)


@dataclass(frozen=True, eq=False)
class FeatureFile:
    """A feature file's ids, metadata and row-group layout; features are read on demand."""

    path: Path
    ids: tuple[str, ...]
    meta: dict[str, str]
    dim: int
    dtype: np.dtype
    group_starts: np.ndarray  # first row of every row group, then the number of rows

    @classmethod
    def open(cls, path: str | Path) -> FeatureFile:
        p = Path(path)
        try:
            f = pq.ParquetFile(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: feature file not found") from None
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{p}: not a readable Parquet feature file ({e})") from e
        schema = f.schema_arrow
        dim = check_schema(p, schema)
        ids = f.read(columns=["image_id"]).column("image_id")
        if ids.null_count:
            raise ValueError(f"{p}: null image ids")
        sizes = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
        dtype = np.dtype(np.float16 if schema.field("feature").type.value_type == pa.float16() else np.float32)
        return cls(p, tuple(ids.to_pylist()), schema_metadata(schema), dim, dtype,
                   np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def backbone(self) -> str | None:
        return self.meta.get("backbone")

    @property
    def weights(self) -> str | None:
        return self.meta.get("weights")

    @property
    def grid(self) -> tuple[int, int] | None:
        """(regions, channels) of a region-grid file; None for pooled features."""
        if self.meta.get("spatial") != "grid":
            return None
        return int(self.meta["regions"]), int(self.meta["channels"])

    def describe(self) -> str:
        """``49 x 1280-d efficientnet_lite0 features (float16, 7000 images, 3 row groups)``."""
        shape = f"{self.grid[0]} x {self.grid[1]}-d" if self.grid else f"{self.dim}-d"
        return f"{shape} {self.backbone} features ({self.dtype}, {len(self)} images, {self.groups} row groups)"

    @property
    def groups(self) -> int:
        return len(self.group_starts) - 1

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        """The row group holding each of `rows`."""
        return np.searchsorted(self.group_starts, rows, side="right") - 1

    def group_rows(self, group: int) -> int:
        return int(self.group_starts[group + 1] - self.group_starts[group])

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    def read_groups(self, groups: Sequence[int]) -> np.ndarray:
        """The rows of `groups`, in that order, as one (rows, D) array of the stored dtype."""
        out = np.empty((sum(self.group_rows(g) for g in groups), self.dim), self.dtype)
        at = 0
        f = pq.ParquetFile(self.path)
        for g in groups:  # one group at a time: at most one group's Arrow buffers beside `out`
            try:
                column = f.read_row_group(int(g), columns=["feature"]).column("feature")
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{self.path}: cannot read row group {g} ({e})") from e
            block = feature_matrix(column, self.dim, self.path)
            out[at : at + len(block)] = block
            at += len(block)
        return out

    def gather(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Features of `rows` (any order, repeats allowed), reading one row group at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), self.dtype)
        groups = self.group_of(rows)
        for g in np.unique(groups):
            at = np.flatnonzero(groups == g)
            out[at] = self.read_groups([g])[rows[at] - self.group_starts[g]]
        return out

    def read_all(self) -> np.ndarray:
        """Every row (what the in-memory path holds)."""
        return self.read_groups(range(self.groups))


def report_path(features_path: str | os.PathLike[str]) -> Path:
    """The bad-image report beside a feature file: ``x.parquet`` -> ``x.report.json``."""
    p = Path(features_path)
    return p.with_name(f"{p.stem}.report.json")


def write_features(
    path: str | os.PathLike[str],
    image_ids: Sequence[str],
    features: np.ndarray,
    metadata: dict[str, str | int],
    dtype: str = "float32",
    row_group_bytes: int | None = None,
) -> None:
    """Write ids and (N, D) features as Parquet, atomically; `metadata` must name the ``backbone``.

    ``feature_dim`` is added to the schema metadata (and must agree with D if given).
    `dtype`: "float32" or "float16" (half the size; values beyond +-65504 are an error).
    Row groups hold about `row_group_bytes` (default ROW_GROUP_BYTES) as float32: the unit that
    training streams (captioner.training.batches).
    """
    p = Path(path)
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[1] < 1:
        raise ValueError(f"{p}: features must be (N, D) with D >= 1, got shape {feats.shape}")
    if len(image_ids) != len(feats):
        raise ValueError(f"{p}: {len(image_ids)} image ids for {len(feats)} feature rows")
    write_feature_blocks(p, [(image_ids, feats)], feats.shape[1], metadata, dtype, row_group_bytes)


def write_feature_blocks(
    path: str | os.PathLike[str],
    blocks: Iterable[tuple[Sequence[str], np.ndarray]],
    dim: int,
    metadata: dict[str, str | int],
    dtype: str = "float32",
    row_group_bytes: int | None = None,
) -> None:
    """:func:`write_features` from (ids, (n, D) features) blocks, e.g. one per extraction shard:
    only one row group is held at a time, and the file is byte for byte the one that
    `write_features` writes from the blocks concatenated."""
    p = Path(path)
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"{p}: dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    if "backbone" not in metadata:
        raise ValueError(f"{p}: metadata must include 'backbone'")
    if "feature_dim" in metadata and int(metadata["feature_dim"]) != dim:
        raise ValueError(f"{p}: metadata feature_dim={metadata['feature_dim']} but features have D={dim}")
    value = pa.float16() if dtype == "float16" else pa.float32()
    schema = pa.schema(
        [("image_id", pa.string()), ("feature", pa.list_(value, dim))],
        metadata={**{k: str(v) for k, v in metadata.items()}, "feature_dim": str(dim)},
    )
    # Row groups of about ROW_GROUP_BYTES, converted one group at a time: memory stays bounded.
    rows = max(1, (row_group_bytes or ROW_GROUP_BYTES) // (dim * 4))
    seen: set[str] = set()

    def groups() -> Iterator[tuple[list[str], np.ndarray]]:
        ids: list[str] = []
        parts: list[np.ndarray] = []
        for block_ids, block in blocks:
            block = np.asarray(block)
            if block.ndim != 2 or block.shape[1] != dim:
                raise ValueError(f"{p}: features must be (N, {dim}), got a block of shape {block.shape}")
            ids.extend(block_ids)
            parts.append(block)
            while len(ids) >= rows:
                joined = np.concatenate(parts)
                yield ids[:rows], joined[:rows]
                ids, parts = ids[rows:], [joined[rows:]]
        if ids:
            yield ids, np.concatenate(parts)

    written = 0
    with atomic_path(p) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for ids, group in groups():
            seen.update(ids)
            written += len(ids)
            if len(seen) != written:
                raise ValueError(f"{p}: duplicate image ids")
            with np.errstate(over="ignore"):  # checked just below
                chunk = np.ascontiguousarray(group, dtype=np.dtype(dtype))
            if not np.isfinite(chunk).all() and np.isfinite(group).all():
                raise ValueError(f"{p}: features exceed the float16 range; store them as float32")
            writer.write_table(pa.table({
                "image_id": pa.array(list(ids), pa.string()),
                "feature": pa.FixedSizeListArray.from_arrays(pa.array(chunk.reshape(-1)), dim),
            }, schema=schema))


def read_features(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """A whole feature file: (image ids, (N, D) features in the stored dtype, schema metadata)."""
    f = FeatureFile.open(path)
    return list(f.ids), f.read_all(), f.meta
