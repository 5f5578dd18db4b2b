"""Batched CNN feature extraction with overlapped image decoding, resumable through shards.

Decoding runs in a thread pool (PIL releases the GIL while decoding and resizing) a few
batches ahead of the network, so the CPU decodes batch k+1.. while the model runs batch k.
The network runs through ``Backbone.forward`` (a ``tf.function``, no XLA), never ``model.predict``.

Bad images: with ``on_error="skip"`` an undecodable, empty, truncated, missing or non-image
file becomes a failed row (listed in `Extraction.errors`) and decodable-but-unusual ones are
converted and listed in `Extraction.notes`; :func:`extraction_report` and
:func:`check_bad_images` turn that into the report file and the ``max_bad_images`` threshold.

Resuming: given a shard folder (captioner.features.shards), every finished batch is persisted
there, and a rerun reads back the shards whose images are unchanged instead of recomputing
them. Batches keep their boundaries, so the result is bit for bit the one of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from captioner.features.images import ImageError, read_image
from captioner.features.shards import BatchResult, file_stamp, read_shard, shard_features, shard_path, write_shard
from captioner.features.store import feature_metadata, write_feature_blocks

if TYPE_CHECKING:
    from captioner.features.backbones import Backbone

__all__ = ["BatchResult", "Decoded", "Extraction", "OnError", "check_bad_images", "decoded_batches", "extract",
           "extract_features", "extraction_report", "run_batches", "write_feature_file"]

OnError = Literal["raise", "skip"]
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




def write_feature_file(out: str | os.PathLike[str], extraction: Extraction, image_ids: Sequence[str],
                       shards: str | os.PathLike[str], batch_size: int, backbone: Backbone, weights: str,
                       dtype: str = "float32") -> None:
    """The feature file of an extraction made with ``collect=False``: the images that loaded,
    read back from the shards and written a row group at a time (memory holds one batch)."""
    ok = extraction.ok_mask
    batches = -(-len(image_ids) // batch_size)
    good_ids = [[i for i, good in zip(image_ids[s : s + batch_size], ok[s : s + batch_size]) if good]
                for s in range(0, len(image_ids), batch_size)]
    write_feature_blocks(out, zip(good_ids, shard_features(shards, batches, ok, batch_size)), backbone.feature_dim,
                         feature_metadata(backbone.name, weights, backbone.feature_dim, backbone.grid), dtype=dtype)
