"""Training batches: captions of similar length share a batch (length buckets), each batch
padded only to its own longest caption, reshuffled every epoch from the member's seed.

In memory (`make_dataset`): the whole feature array is there. Streamed from the feature file
(`make_streamed_dataset`): an epoch visits the file's row groups in a shuffled order, `window`
groups at a time (about `train.feature_window_mb` of stored features), so memory holds two
windows (the one in use and the next, read in a background thread) whatever the number of
images. Within a window the captions of its images are bucketed and shuffled as by
:func:`plan_batches`; a bucket's last, partial batch is carried into the next window with its
features, so every epoch has exactly the in-memory plan's number of batches, each full but the
buckets' last. With one window (the whole file fits) the batches are those of the in-memory
path, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from captioner.features.store import FeatureFile

__all__ = ["Batch", "EpochShuffle", "batch_count", "caption_lengths", "make_batch", "make_dataset",
           "make_streamed_dataset", "plan_batches", "trim_batch", "window_groups", "windowed_batches"]

# ((features, input ids), target ids)
Batch = tuple[tuple[np.ndarray, np.ndarray], np.ndarray]


def caption_lengths(ids: np.ndarray) -> np.ndarray:
    """Number of non-padding tokens of each row."""
    return (ids != 0).sum(axis=1)


def plan_batches(
    lengths: np.ndarray, batch_size: int, bucket_width: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Row indices per batch; rows of similar length (same bucket) share a batch.

    With `rng`, rows are shuffled within buckets and the batch order is shuffled; without
    it, the plan is deterministic (for validation). The number of batches never changes.
    """
    buckets = lengths // bucket_width
    batches: list[np.ndarray] = []
    for b in np.unique(buckets):
        rows = np.flatnonzero(buckets == b)
        if rng is not None:
            rows = rng.permutation(rows)
        batches.extend(rows[i : i + batch_size] for i in range(0, len(rows), batch_size))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def trim_batch(ids: np.ndarray, features: np.ndarray) -> Batch:
    """((features, input ids), target ids) of a batch's caption ids, trimmed to its longest
    caption. Features stored as float16 are widened to float32 here, one batch at a time."""
    seq = ids[:, : int(caption_lengths(ids).max())]
    return (features.astype(np.float32, copy=False), seq[:, :-1]), seq[:, 1:]


def make_batch(ids: np.ndarray, image_rows: np.ndarray, features: np.ndarray, rows: np.ndarray) -> Batch:
    """((image features, input ids), target ids) for `rows`, trimmed to their longest caption."""
    return trim_batch(ids[rows], features[image_rows[rows]])


class EpochShuffle:
    """The shuffle of a training dataset: epoch k draws the k-th shuffle of one generator seeded
    once, however often a pass is started (under a tf.distribute strategy Keras peeks at one
    batch before fitting, and that abandoned pass must not use up epoch 1's shuffle), and across
    a resume (:meth:`state_after` is what a checkpoint keeps, :meth:`resume` puts it back).

    A pass calls :meth:`begin` (the generator at its epoch's start), :meth:`drawn` once its
    epoch's draws are all made and *before* it yields its last batch (so the state is recorded
    by the time the model has seen that batch, whatever the prefetching), and :meth:`end` after
    its last batch; only a pass that ended moves the next one to the next epoch."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.epoch = 0  # 0-based epoch of the current (or next) pass
        self._start = self.rng.bit_generator.state
        self._after: dict[int, dict] = {}
        self._ended = False

    def begin(self) -> np.random.Generator:
        if self._ended:
            self._start, self._ended = self._after[self.epoch], False
            self.epoch += 1
            self._after = {e: s for e, s in self._after.items() if e >= self.epoch - 1}
        self.rng.bit_generator.state = self._start
        return self.rng

    def drawn(self) -> None:
        self._after[self.epoch] = self.rng.bit_generator.state

    def end(self) -> None:
        self._ended = True

    def state_after(self, epoch: int) -> dict:
        """The generator's state once epoch `epoch` (0-based) has drawn its whole shuffle."""
        if epoch not in self._after:
            raise ValueError(f"the shuffle of epoch {epoch + 1} is not drawn yet (pass {self.epoch + 1})")
        return self._after[epoch]

    def resume(self, epoch: int, state: dict) -> None:
        """Start at epoch `epoch` (0-based) from `state`, the :meth:`state_after` of epoch - 1."""
        self.epoch, self._start, self._after, self._ended = epoch, state, {}, False


def _shuffle(seed: int | EpochShuffle | None) -> EpochShuffle | None:
    return seed if isinstance(seed, EpochShuffle) or seed is None else EpochShuffle(seed)


def make_dataset(
    ids: np.ndarray,
    image_rows: np.ndarray,
    features: np.ndarray,
    batch_size: int,
    bucket_width: int,
    seed: int | EpochShuffle | None,
    max_batches: int = 0,
) -> tf.data.Dataset:
    """A tf.data pipeline of bucketed batches; reshuffled every epoch when `seed` (or an
    :class:`EpochShuffle`) is given; the first `max_batches` of each epoch's batches when > 0
    (smoke runs, benchmarks)."""
    shuffle = _shuffle(seed)
    lengths = caption_lengths(ids)
    n_batches = len(plan_batches(lengths, batch_size, bucket_width, None))
    if max_batches > 0:
        n_batches = min(n_batches, max_batches)

    def generate() -> Iterator[Batch]:
        plan = plan_batches(lengths, batch_size, bucket_width, shuffle.begin() if shuffle else None)
        if shuffle:
            shuffle.drawn()
        for rows in plan[:n_batches]:
            yield make_batch(ids, image_rows, features, rows)
        if shuffle:
            shuffle.end()

    spec = (
        (
            tf.TensorSpec((None, features.shape[1]), tf.float32),
            tf.TensorSpec((None, None), tf.int32),
        ),
        tf.TensorSpec((None, None), tf.int32),
    )
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)


def window_groups(file: FeatureFile, window_mb: float) -> int:
    """Row groups per window: as many as fit in `window_mb` of stored features (at least one)."""
    biggest = max((file.group_rows(g) for g in range(file.groups)), default=1)
    return max(1, int(window_mb * 2**20 // max(1, biggest * file.row_bytes)))


def batch_count(lengths: np.ndarray, batch_size: int, bucket_width: int) -> int:
    """Batches per epoch: one per `batch_size` captions of each length bucket, rounded up."""
    _, counts = np.unique(lengths // bucket_width, return_counts=True)
    return int(sum(-(-c // batch_size) for c in counts))


@dataclass
class _Carry:
    """Captions left over from earlier windows (fewer than a batch per bucket), with their features."""

    captions: np.ndarray
    features: np.ndarray


def windowed_batches(
    file: FeatureFile,
    ids: np.ndarray,
    image_rows: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    bucket_width: int,
    window: int,
    rng: np.random.Generator | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (caption indices, their stored-dtype features) batches.

    With `rng`, the group order, each bucket's captions and each window's batch order are
    shuffled; without it everything is in file order (validation)."""
    order = np.arange(file.groups)
    windows = [order[i : i + window] for i in range(0, len(order), window)]
    if rng is not None and len(windows) > 1:
        order = rng.permutation(file.groups)
        windows = [order[i : i + window] for i in range(0, len(order), window)]
    group = file.group_of(image_rows)
    buckets = lengths // bucket_width
    carry = _Carry(np.empty(0, np.int64), np.empty((0, file.dim), file.dtype))
    with ThreadPoolExecutor(1, thread_name_prefix="feature-window") as pool:
        ahead = pool.submit(file.read_groups, windows[0]) if windows else None
        for w, groups in enumerate(windows):
            feats = ahead.result()
            ahead = pool.submit(file.read_groups, windows[w + 1]) if w + 1 < len(windows) else None
            last = w + 1 == len(windows)
            # Local feature row of a group's first row inside this window's array.
            offset = np.full(file.groups, -1, np.int64)
            offset[groups] = np.concatenate([[0], np.cumsum([file.group_rows(g) for g in groups])[:-1]])
            mine = np.flatnonzero(np.isin(group, groups))
            local = offset[group[mine]] + image_rows[mine] - file.group_starts[group[mine]]
            k = len(carry.captions)  # rows < k are the carry's features, the others this window's
            captions = np.concatenate([carry.captions, mine])
            rows = np.concatenate([np.arange(k), local + k])

            def take(at: np.ndarray) -> np.ndarray:
                r = rows[at]
                if k == 0:
                    return feats[r]
                out = np.empty((len(r), file.dim), file.dtype)
                out[r < k] = carry.features[r[r < k]]
                out[r >= k] = feats[r[r >= k] - k]
                return out

            out: list[np.ndarray] = []  # batches, as positions into `captions`
            left: list[np.ndarray] = []
            for b in np.unique(buckets[captions]):
                at = np.flatnonzero(buckets[captions] == b)
                if rng is not None:
                    at = rng.permutation(at)
                full = len(at) - (0 if last else len(at) % batch_size)
                out.extend(at[i : i + batch_size] for i in range(0, full, batch_size))
                left.append(at[full:])
            if rng is not None:
                out = [out[i] for i in rng.permutation(len(out))]
            for at in out:
                yield captions[at], take(at)
            kept = np.concatenate(left) if left else np.empty(0, np.int64)
            carry = _Carry(captions[kept], take(kept))


def make_streamed_dataset(
    file: FeatureFile,
    ids: np.ndarray,
    image_rows: np.ndarray,
    batch_size: int,
    bucket_width: int,
    window: int,
    seed: int | EpochShuffle | None,
    max_batches: int = 0,
):
    """A tf.data pipeline over :func:`windowed_batches`; reshuffled every epoch when `seed` (or
    an :class:`EpochShuffle`) is given; at most `max_batches` batches per epoch when > 0 (0: all)."""

    shuffle = _shuffle(seed)
    lengths = caption_lengths(ids)
    n_batches = batch_count(lengths, batch_size, bucket_width)
    if max_batches > 0:
        n_batches = min(n_batches, max_batches)

    def generate() -> Iterator[Batch]:
        rng = shuffle.begin() if shuffle else None
        batches = windowed_batches(file, ids, image_rows, lengths, batch_size, bucket_width, window, rng)
        for i in range(n_batches):
            captions, feats = next(batches)
            if shuffle and i == n_batches - 1:  # an epoch's draws end with its last batch's window
                shuffle.drawn()
            yield trim_batch(ids[captions], feats)
        batches.close()
        if shuffle:
            shuffle.end()

    spec = (
        (tf.TensorSpec((None, file.dim), tf.float32), tf.TensorSpec((None, None), tf.int32)),
        tf.TensorSpec((None, None), tf.int32),
    )
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)
