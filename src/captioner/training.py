"""The fit loop: length-bucketed teacher forcing over whole captions, masked loss, best-epoch restore.

Teacher forcing over a whole caption is equivalent, for a causal LSTM, to the seed's one
sample per (prefix -> next word) pair, but the image feature is gathered per batch instead of
being copied once per prefix, and each batch is padded only to its own longest caption.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

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


def make_batch(ids: np.ndarray, image_rows: np.ndarray, features: np.ndarray, rows: np.ndarray) -> Batch:
    """((image features, input ids), target ids) for `rows`, trimmed to their longest caption.

    Features stored as float16 are widened to float32 here, one batch at a time."""
    width = int(caption_lengths(ids[rows]).max())
    seq = ids[rows, :width]
    return (features[image_rows[rows]].astype(np.float32, copy=False), seq[:, :-1]), seq[:, 1:]


def make_dataset(
    ids: np.ndarray,
    image_rows: np.ndarray,
    features: np.ndarray,
    batch_size: int,
    bucket_width: int,
    seed: int | None,
) -> tf.data.Dataset:
    """A tf.data pipeline of bucketed batches; reshuffled every epoch when `seed` is given."""
    rng = np.random.default_rng(seed) if seed is not None else None
    lengths = caption_lengths(ids)
    n_batches = len(plan_batches(lengths, batch_size, bucket_width, None))

    def generate() -> Iterator[Batch]:
        for rows in plan_batches(lengths, batch_size, bucket_width, rng):
            yield make_batch(ids, image_rows, features, rows)

    spec = (
        (
            tf.TensorSpec((None, features.shape[1]), tf.float32),
            tf.TensorSpec((None, None), tf.int32),
        ),
        tf.TensorSpec((None, None), tf.int32),
    )
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)


@contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Layers built inside compute in `name` ("float32", "mixed_bfloat16"); restored after."""
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def float32_copy(model: keras.Model, build: Callable[[], keras.Model]) -> keras.Model:
    """The same weights in a float32 model from `build` (the mixed-precision model's
    variables are float32 already): what is saved, so decoding never sees bfloat16."""
    with dtype_policy("float32"):
        copy = build()
    copy.set_weights(model.get_weights())
    return copy


def masked_accuracy(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Next-word accuracy over real (non-padding) positions."""
    y_true = tf.cast(y_true, tf.int32)
    mask = tf.cast(y_true != 0, tf.float32)
    hit = tf.cast(tf.cast(tf.argmax(y_pred, axis=-1), tf.int32) == y_true, tf.float32)
    return tf.reduce_sum(hit * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def smoothed_masked_loss(label_smoothing: float):
    """Cross-entropy over real positions with `label_smoothing` of the target mass spread evenly."""

    def loss(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        y_true = tf.cast(y_true, tf.int32)
        mask = tf.cast(y_true != 0, tf.float32)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))  # bfloat16 logits: softmax in float32
        nll = -tf.gather(logp, y_true, batch_dims=2)
        uniform = -tf.reduce_mean(logp, axis=-1)
        per_word = (1.0 - label_smoothing) * nll + label_smoothing * uniform
        return tf.reduce_sum(per_word * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

    return loss


def masked_nll(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Plain next-word cross-entropy over real positions (comparable across label smoothing)."""
    return smoothed_masked_loss(0.0)(y_true, y_pred)


def compile_model(model: keras.Model, learning_rate: float, label_smoothing: float = 0.0) -> None:
    """Adam + cross-entropy that ignores padding (class 0): padding never leaks into the loss."""
    loss = (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
        if label_smoothing == 0.0
        else smoothed_masked_loss(label_smoothing)
    )
    metrics = [masked_accuracy] if label_smoothing == 0.0 else [masked_accuracy, masked_nll]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)


@dataclass(frozen=True)
class FitResult:
    """What a fit did: the epoch kept (1-based), its validation loss, epochs run, history."""

    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: dict[str, list[float]]


def fit(
    model: keras.Model,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    epochs: int,
    patience: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | str = "auto",
    lr_factor: float = 1.0,
    lr_patience: int = 1,
) -> FitResult:
    """Fit with early stopping on validation loss; the model ends with its best weights.

    With `lr_factor` < 1 the learning rate is multiplied by it whenever the validation loss
    has not improved for `lr_patience` epochs.
    """
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True
    )
    extra: list[keras.callbacks.Callback] = []
    if lr_factor < 1.0:
        extra.append(keras.callbacks.ReduceLROnPlateau("val_loss", factor=lr_factor, patience=lr_patience))
    hist = model.fit(
        train, validation_data=val, epochs=epochs, callbacks=[stop, *extra, *(callbacks or [])],
        verbose=verbose, shuffle=False,  # the dataset reshuffles itself every epoch
    )
    val_loss = hist.history["val_loss"]
    best = int(np.argmin(val_loss))
    return FitResult(best + 1, float(val_loss[best]), len(val_loss), dict(hist.history))
