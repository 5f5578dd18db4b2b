"""The Parquet feature file, read a few row groups at a time.

`FeatureFile.open` reads the image ids and the schema only; features come from
`read_groups` (whole row groups, in the stored dtype) or `gather` (any rows, reading only the
groups that hold them, one at a time). Memory then follows what a caller asks for, never the
file's size: a COCO grid file (123,287 images x 49 x 1280, 15 GB as float16) is read in windows.
A `FeatureFile` pickles as its path and metadata (a Ray task reopens the file itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("image_id", "feature")


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
