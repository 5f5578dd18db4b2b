"""Batched CNN feature extraction with overlapped image decoding, and the Parquet feature file.

Decoding runs in a thread pool (PIL releases the GIL while decoding and resizing) a few
batches ahead of the network, so the CPU decodes batch k+1.. while the model runs batch k.
The network runs through ``Backbone.forward`` (a ``tf.function``, no XLA), never ``model.predict``.

Feature file: Parquet with columns ``image_id`` (string) and ``feature``
(fixed_size_list<float32>[D]); schema metadata holds ``backbone``, ``feature_dim`` and any
other metadata given to :func:`write_features` (values stored as strings).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from captioner.images import ImageError, load_image
from captioner.io import atomic_path

if TYPE_CHECKING:
    from captioner.backbones import Backbone

OnError = Literal["raise", "skip"]
# One decoded image: (pixels, None) or, when skipping, (None, problem).
Decoded = tuple[np.ndarray | None, str | None]


@dataclass(frozen=True)
class Extraction:
    """Result of :func:`extract`.

    features: (N, D) float32 in input order; rows of images that failed to load are NaN.
    ok_mask: (N,) bool, False where the image failed.
    errors: (path, problem) for each failed image, in input order.
    """

    features: np.ndarray
    ok_mask: np.ndarray
    errors: list[tuple[str, str]]


def _decode(path: Path, size: int, on_error: OnError) -> Decoded:
    """Load one image; with on_error="skip" an ImageError becomes (None, problem)."""
    try:
        return load_image(path, size), None
    except ImageError as e:
        if on_error == "raise":
            raise
        return None, e.problem


def _stack(decoded: list[Decoded], size: int) -> np.ndarray:
    """Stack a batch of decoded images; failed ones become black placeholders."""
    blank = np.zeros((size, size, 3), np.uint8)
    return np.stack([blank if pixels is None else pixels for pixels, _ in decoded])


def decoded_batches(
    paths: Sequence[Path],
    size: int,
    batch_size: int,
    workers: int,
    prefetch: int = 2,
    on_error: OnError = "raise",
) -> Iterator[list[Decoded]]:
    """Yield decoded images batch by batch, in order.

    With workers > 0, a pool of that many threads keeps `prefetch` (>= 1) batches queued or
    decoding beyond the one being consumed; workers == 0 decodes in the calling thread.
    """
    if batch_size < 1 or workers < 0 or prefetch < 1:
        raise ValueError(
            f"need batch_size >= 1, workers >= 0, prefetch >= 1 (got {batch_size}, {workers}, {prefetch})"
        )
    starts = range(0, len(paths), batch_size)
    if workers == 0:
        for start in starts:
            yield [_decode(Path(p), size, on_error) for p in paths[start : start + batch_size]]
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[list[Future[Decoded]]] = deque()
        todo = iter(starts)

        def submit(start: int) -> None:
            pending.append(
                [pool.submit(_decode, Path(p), size, on_error) for p in paths[start : start + batch_size]]
            )

        try:
            for start in itertools.islice(todo, prefetch):
                submit(start)
            while pending:
                batch = pending.popleft()
                if (start := next(todo, None)) is not None:
                    submit(start)
                yield [f.result() for f in batch]
        finally:
            for batch in pending:
                for f in batch:
                    f.cancel()


def extract(
    paths: Sequence[str | os.PathLike[str]],
    backbone: Backbone,
    batch_size: int,
    workers: int,
    progress: bool = True,
    on_error: OnError = "raise",
    prefetch: int = 2,
) -> Extraction:
    """Extract features of `paths` with `backbone`; on_error="skip" reports bad images instead of raising.

    With on_error="raise" the first bad image raises ImageError naming the file.
    """
    paths = [Path(p) for p in paths]
    features = np.empty((len(paths), backbone.feature_dim), np.float32)
    ok = np.ones(len(paths), bool)
    errors: list[tuple[str, str]] = []
    row = 0
    batches = decoded_batches(paths, backbone.input_size, batch_size, workers, prefetch, on_error)
    with tqdm(total=len(paths), unit="img", desc=f"features ({backbone.name})", disable=not progress) as bar:
        for decoded in batches:
            out = backbone.forward(backbone.preprocess(_stack(decoded, backbone.input_size)))
            features[row : row + len(decoded)] = out
            for i, (_, problem) in enumerate(decoded, start=row):
                if problem is not None:
                    ok[i] = False
                    features[i] = np.nan
                    errors.append((str(paths[i]), problem))
            row += len(decoded)
            bar.update(len(decoded))
    return Extraction(features, ok, errors)


def extract_features(
    paths: Sequence[str | os.PathLike[str]],
    backbone: Backbone,
    batch_size: int,
    workers: int,
    progress: bool = True,
) -> np.ndarray:
    """(N, feature_dim) float32 features of `paths`, in order; a bad image raises ImageError naming it."""
    return extract(paths, backbone, batch_size, workers, progress, on_error="raise").features


def write_features(
    path: str | os.PathLike[str],
    image_ids: Sequence[str],
    features: np.ndarray,
    metadata: dict[str, str | int],
) -> None:
    """Write ids and (N, D) features as Parquet, atomically; `metadata` must name the ``backbone``.

    ``feature_dim`` is added to the schema metadata (and must agree with D if given).
    """
    p = Path(path)
    feats = np.ascontiguousarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[1] < 1:
        raise ValueError(f"{p}: features must be (N, D) with D >= 1, got shape {feats.shape}")
    if len(image_ids) != len(feats):
        raise ValueError(f"{p}: {len(image_ids)} image ids for {len(feats)} feature rows")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError(f"{p}: duplicate image ids")
    if "backbone" not in metadata:
        raise ValueError(f"{p}: metadata must include 'backbone'")
    dim = feats.shape[1]
    if "feature_dim" in metadata and int(metadata["feature_dim"]) != dim:
        raise ValueError(f"{p}: metadata feature_dim={metadata['feature_dim']} but features have D={dim}")
    table = pa.table(
        {
            "image_id": pa.array(list(image_ids), pa.string()),
            "feature": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), dim),
        }
    ).replace_schema_metadata({**{k: str(v) for k, v in metadata.items()}, "feature_dim": str(dim)})
    with atomic_path(p) as tmp:
        pq.write_table(table, tmp)


def read_features(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Read a feature file: (image ids, (N, D) float32 features, schema metadata).

    The feature array is a zero-copy view of Arrow memory when possible, hence may be read-only.
    """
    p = Path(path)
    try:
        table = pq.read_table(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: feature file not found") from None
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{p}: not a readable Parquet feature file ({e})") from e
    missing = [c for c in ("image_id", "feature") if c not in table.column_names]
    if missing:
        raise ValueError(f"{p}: missing column(s) {missing}; found {table.column_names}")
    ids_col, feat_col = table.column("image_id"), table.column("feature").combine_chunks()
    ftype = feat_col.type
    if not (pa.types.is_fixed_size_list(ftype) and ftype.value_type == pa.float32()):
        raise ValueError(f"{p}: column 'feature' is {ftype}, expected fixed_size_list<float32>")
    if not pa.types.is_string(ids_col.type):
        raise ValueError(f"{p}: column 'image_id' is {ids_col.type}, expected string")
    if ids_col.null_count or feat_col.null_count or feat_col.flatten().null_count:
        raise ValueError(f"{p}: null image ids or features")
    feats = feat_col.flatten().to_numpy(zero_copy_only=False).reshape(len(feat_col), ftype.list_size)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return ids_col.to_pylist(), feats, meta
