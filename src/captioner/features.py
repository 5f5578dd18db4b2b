"""Batched CNN feature extraction with overlapped image decoding, and the Parquet feature file.

Decoding runs in a thread pool (PIL releases the GIL while decoding and resizing) a few
batches ahead of the network, so the CPU decodes batch k+1.. while the model runs batch k.
The network runs through ``Backbone.forward`` (a ``tf.function``, no XLA), never ``model.predict``.

Feature file: Parquet with columns ``image_id`` (string) and ``feature``
(fixed_size_list<float32 or float16>[D]); schema metadata holds ``backbone``, ``feature_dim``
and any other metadata given to :func:`write_features` (values stored as strings). A region
grid (for the attention decoder) is stored flattened, D = regions * channels, with
``regions`` and ``channels`` in the metadata.

Bad images: with ``on_error="skip"`` an undecodable, empty, truncated, missing or non-image
file becomes a failed row (listed in `Extraction.errors`) and decodable-but-unusual ones are
converted and listed in `Extraction.notes`; :func:`extraction_report` and
:func:`check_bad_images` turn that into the report file and the ``max_bad_images`` threshold.

Resuming: given a shard folder, every finished batch is persisted there as a small Parquet
shard (atomically), and a rerun reads back the shards whose images are unchanged instead of
recomputing them. Batches keep their boundaries, so the result is bit for bit the one of an
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from captioner.feature_file import check_schema, feature_matrix, schema_metadata
from captioner.images import ImageError, read_image
from captioner.io import atomic_path

if TYPE_CHECKING:
    from captioner.backbones import Backbone

OnError = Literal["raise", "skip"]
FEATURE_DTYPES = ("float32", "float16")
ROW_GROUP_BYTES = 16 << 20  # row groups of about this size (as float32): the unit of streamed reads
SHARD_FORMAT = "captioner-feature-shard/1"
DEFAULT_MAX_EXAMPLES = 20


class Decoded(NamedTuple):
    """One decoded image: pixels, or (when skipping) None and the problem; conversion notes."""

    pixels: np.ndarray | None
    problem: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Extraction:
    """Result of :func:`extract`.

    features: (N, D) float32 in input order; rows of images that failed to load are NaN.
    ok_mask: (N,) bool, False where the image failed.
    errors: (path, problem) for each failed image, in input order.
    notes: (path, note) for each conversion a decodable image needed (see images.NOTE_KINDS).
    resumed: how many images were read back from shards of an interrupted run.
    """

    features: np.ndarray | None  # None when extracted with collect=False (read the shards back)
    ok_mask: np.ndarray
    errors: list[tuple[str, str]]
    notes: list[tuple[str, str]] = field(default_factory=list)
    resumed: int = 0


@dataclass(frozen=True)
class BatchResult:
    """One batch's outcome, as persisted in a shard: per image its path, file stamp, feature
    row (NaN if it failed), problem (None if it loaded) and conversion notes."""

    paths: list[str]
    stamps: list[tuple[int, int]]
    features: np.ndarray
    problems: list[str | None]
    notes: list[tuple[str, ...]]


def _decode(path: Path, size: int, on_error: OnError) -> Decoded:
    """Load one image; with on_error="skip" any failure becomes Decoded(None, problem)."""
    try:
        loaded = read_image(path, size)
        return Decoded(loaded.pixels, None, loaded.notes)
    except ImageError as e:
        if on_error == "raise":
            raise
        return Decoded(None, e.problem)
    except Exception as e:  # a decoder bug on a hostile file must not stop 8,000 good ones
        if on_error == "raise":
            raise ImageError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
        return Decoded(None, f"cannot decode image ({type(e).__name__}: {e})")


def _stack(decoded: list[Decoded], size: int) -> np.ndarray:
    """Stack a batch of decoded images; failed ones become black placeholders."""
    blank = np.zeros((size, size, 3), np.uint8)
    return np.stack([blank if d.pixels is None else d.pixels for d in decoded])


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


def pin_threads(threads: int) -> None:
    """Pin TensorFlow's intra- and inter-op thread pools to `threads` (before TF runs any op).

    Float sums split over threads are added in another order with another thread count, so a
    process that must reproduce another's bytes (a Ray worker, where Ray also sets
    OMP_NUM_THREADS) pins the same count. Once TensorFlow has started (only in a process that
    ran TensorFlow before, e.g. a test or a notebook: never in a stage), the pools cannot
    change: a different count is then reported on stderr and the float sums may differ in the
    last bits from a process pinned to `threads`.
    """
    import tensorflow as tf

    th = tf.config.threading
    for get, set_ in ((th.get_intra_op_parallelism_threads, th.set_intra_op_parallelism_threads),
                      (th.get_inter_op_parallelism_threads, th.set_inter_op_parallelism_threads)):
        if get() == threads:
            continue
        try:
            set_(threads)
        except RuntimeError:
            effective = get() or len(os.sched_getaffinity(0))  # 0: TensorFlow's default, one per CPU
            if effective != threads:
                print(f"warning: TensorFlow already runs with {effective} threads in this process; "
                      f"the `threads` param ({threads}) cannot apply, so float sums may differ in the "
                      "last bits from a process pinned to it", file=sys.stderr)
                return


# ---------------------------------------------------------------- shards of an interrupted run


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


# ---------------------------------------------------------------- extraction


def _batch_result(paths: Sequence[Path], decoded: list[Decoded], out: np.ndarray) -> BatchResult:
    """A finished batch: features with NaN rows where the image failed."""
    features = np.array(out, np.float32)
    problems = [d.problem for d in decoded]
    for i, problem in enumerate(problems):
        if problem is not None:
            features[i] = np.nan
    return BatchResult(
        [str(p) for p in paths], [file_stamp(p) for p in paths], features, problems, [d.notes for d in decoded]
    )


def _assemble(results: Sequence[BatchResult], dim: int, resumed: int, collect: bool = True) -> Extraction:
    """Concatenate batch results (in input order) into one Extraction (features only if `collect`)."""
    features = None if not collect else (
        np.concatenate([r.features for r in results]) if results else np.empty((0, dim), np.float32))
    problems = [pr for r in results for pr in r.problems]
    paths = [p for r in results for p in r.paths]
    ok = np.array([pr is None for pr in problems], bool)
    errors = [(p, pr) for p, pr in zip(paths, problems) if pr is not None]
    notes = [(p, n) for r in results for p, ns in zip(r.paths, r.notes) for n in ns]
    return Extraction(features, ok, errors, notes, resumed)


def extract(
    paths: Sequence[str | os.PathLike[str]],
    backbone: Backbone,
    batch_size: int,
    workers: int,
    progress: bool = True,
    on_error: OnError = "raise",
    prefetch: int = 2,
    shards: str | os.PathLike[str] | None = None,
    runner: Callable[[list[list[Path]]], Iterable[BatchResult]] | None = None,
    collect: bool = True,
) -> Extraction:
    """Extract features of `paths` with `backbone`; on_error="skip" reports bad images instead of raising.

    With on_error="raise" the first bad image raises ImageError naming the file. With a
    `shards` folder, each finished batch is persisted there and batches already there (same
    images, unchanged files) are read back instead of recomputed: an interrupted run resumes.
    `runner` (an engine, see captioner.engines) computes the BatchResults of the batches still
    to do, in order, elsewhere; by default :func:`run_batches` computes them here.
    With ``collect=False`` (needs `shards`) the features stay in the shards only, and memory
    does not grow with the number of images: :func:`shard_features` reads them back in order.
    """
    paths = [Path(p) for p in paths]
    if batch_size < 1:
        raise ValueError(f"need batch_size >= 1 (got {batch_size})")
    if not collect and shards is None:
        raise ValueError("extract(collect=False) keeps the features in shards: give a shards folder")
    spans = [paths[s : s + batch_size] for s in range(0, len(paths), batch_size)]
    folder = Path(shards) if shards is not None else None
    done: dict[int, BatchResult] = {}
    if folder is not None and folder.is_dir():
        for i, span in enumerate(spans):
            if (r := read_shard(shard_path(folder, i), [str(p) for p in span], backbone.feature_dim)) is not None:
                done[i] = r if collect else _without_features(r)
    resumed = sum(len(r.paths) for r in done.values())
    todo = [i for i in range(len(spans)) if i not in done]
    if runner is None:
        results = run_batches([spans[i] for i in todo], backbone, workers, prefetch, on_error)
    else:
        results = runner([spans[i] for i in todo])
    with tqdm(
        total=len(paths), initial=resumed, unit="img", desc=f"features ({backbone.name})", disable=not progress
    ) as bar:
        for i, result in zip(todo, results, strict=True):
            if folder is not None:
                write_shard(shard_path(folder, i), result)
            done[i] = result if collect else _without_features(result)
            bar.update(len(result.paths))
    return _assemble([done[i] for i in range(len(spans))], backbone.feature_dim, resumed, collect)


def _without_features(result: BatchResult) -> BatchResult:
    """The batch's paths, problems and notes, its features dropped (they are in its shard)."""
    return dataclasses.replace(result, features=np.empty((len(result.paths), 0), np.float32))


def run_batches(
    spans: Sequence[Sequence[Path]], backbone: Backbone, workers: int, prefetch: int = 2, on_error: OnError = "raise"
) -> Iterator[BatchResult]:
    """Decode and run the CNN on each span of paths (one batch each), in order, in this process.

    Every span but the last has the same length, so the spans re-chunk to the same batches
    (an engine running spans elsewhere calls this with one span at a time)."""
    pending = [p for span in spans for p in span]
    size = max((len(s) for s in spans), default=1)
    batches = decoded_batches(pending, backbone.input_size, size, workers, prefetch, on_error)
    for span, decoded in zip(spans, batches, strict=True):
        out = backbone.forward(backbone.preprocess(_stack(decoded, backbone.input_size)))
        yield _batch_result(span, decoded, out)


# ---------------------------------------------------------------- bad-image report and threshold


def report_path(features_path: str | os.PathLike[str]) -> Path:
    """The bad-image report beside a feature file: ``x.parquet`` -> ``x.report.json``."""
    p = Path(features_path)
    return p.with_name(f"{p.stem}.report.json")


def partial_dir(features_path: str | os.PathLike[str]) -> Path:
    """Folder for the shards of interrupted runs beside a feature file: ``x.parquet`` -> ``x.partial``.

    Not a DVC output, so `dvc repro` leaves it in place between a killed run and the rerun.
    """
    p = Path(features_path)
    return p.with_name(f"{p.stem}.partial")


def extraction_report(
    extraction: Extraction,
    image_ids: Sequence[str],
    paths: Sequence[str | os.PathLike[str]],
    max_bad_images: float,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> dict[str, Any]:
    """JSON-ready report of an extraction of `paths` (parallel to `image_ids`): counts, every
    skipped image with its problem, and the conversions by kind with a few examples each."""
    id_of = {str(Path(p)): i for p, i in zip(paths, image_ids, strict=True)}
    skipped = [{"image_id": id_of[p], "path": p, "problem": problem} for p, problem in extraction.errors]
    converted: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for p, note in extraction.notes:
        kind, _, detail = note.partition(": ")
        converted[kind] = converted.get(kind, 0) + 1
        kept = examples.setdefault(kind, [])
        if len(kept) < max_examples:
            kept.append(f"{p}: {detail}")
    return {
        "images": len(image_ids),
        "extracted": int(extraction.ok_mask.sum()),
        "skipped": len(skipped),
        "max_bad_images": max_bad_images,
        "skipped_images": skipped,
        "converted": dict(sorted(converted.items())),
        "converted_examples": dict(sorted(examples.items())),
    }


def check_bad_images(n_bad: int, n_total: int, max_bad_images: float, report: str | os.PathLike[str]) -> None:
    """Raise ValueError naming `report` when more than `max_bad_images` (a fraction) of the
    images could not be read, or when none could."""
    if n_total and n_bad == n_total:
        raise ValueError(f"{report}: none of the {n_total} images could be read; see the list there")
    if n_total and n_bad / n_total > max_bad_images:
        raise ValueError(
            f"{report}: {n_bad} of {n_total} images could not be read ({n_bad / n_total:.1%} > "
            f"features.max_bad_images={max_bad_images:.1%}); fix or remove the files listed there, "
            "or raise features.max_bad_images"
        )


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
    dtype: str = "float32",
    row_group_bytes: int | None = None,
) -> None:
    """Write ids and (N, D) features as Parquet, atomically; `metadata` must name the ``backbone``.

    ``feature_dim`` is added to the schema metadata (and must agree with D if given).
    `dtype`: "float32" or "float16" (half the size; values beyond +-65504 are an error).
    Row groups hold about `row_group_bytes` (default ROW_GROUP_BYTES) as float32: the unit that
    training streams (captioner.streaming).
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


def read_features(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Read a feature file: (image ids, (N, D) float32 or float16 features, schema metadata).

    The feature array is a zero-copy view of Arrow memory when possible, hence may be read-only.
    """
    p = Path(path)
    try:
        table = pq.read_table(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: feature file not found") from None
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{p}: not a readable Parquet feature file ({e})") from e
    dim = check_schema(p, table.schema)
    ids_col = table.column("image_id")
    if ids_col.null_count:
        raise ValueError(f"{p}: null image ids or features")
    feats = feature_matrix(table.column("feature"), dim, p)
    meta = schema_metadata(table.schema)
    return ids_col.to_pylist(), feats, meta
