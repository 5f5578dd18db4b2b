"""The fit loop: length-bucketed teacher forcing over whole captions, masked loss, best-epoch restore.

Teacher forcing over a whole caption is equivalent, for a causal LSTM, to the Keras tutorial's one
sample per (prefix -> next word) pair, but the image feature is gathered per batch instead of
being copied once per prefix, and each batch is padded only to its own longest caption.

Several devices on one host (`train.devices`): `tf.distribute.MirroredStrategy` splits each
global batch (per-device batch x devices) across replicas; the masked loss is then divided by
the *global* number of real tokens (an all-reduce of the replicas' counts), so a replica whose
half of the batch holds more padding weighs exactly as much as in one-device training.
One ensemble member's whole fit is :func:`train_member` (a `MemberJob` is picklable, so an
engine can run members elsewhere: see captioner.engines).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioner.features.store import FeatureFile
from captioner.training.batches import EpochShuffle, make_dataset, make_streamed_dataset, window_groups
from captioner.training.checkpoint import CheckpointFolder, MemberState

__all__ = [
    "CurveLogger", "EpochCheckpoint", "FitResult", "compiled_member", "finished_member", "GlobalTokenLoss", "MemberJob", "TrainData", "compile_model", "distribution", "dtype_policy",
    "fit", "float32_copy", "masked_accuracy", "masked_nll", "replay_epochs", "smoothed_masked_loss", "train_member",
]


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


def _global_count(count: tf.Tensor) -> tf.Tensor:
    """`count` summed over the replicas of a distribution strategy (itself with one replica)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return count


class GlobalTokenLoss(keras.losses.Loss):
    """Masked (label-smoothed) cross-entropy summed over this replica's real tokens and divided
    by the real tokens of the whole global batch.

    Keras sums the replicas' gradients, so the result is the gradient of the global masked
    mean, whatever share of padding each replica got. Keras also divides a *reduced* loss by
    the replica count; this loss returns a scalar itself (no Keras reduction), so it is not
    divided, and the loss Keras reports (x replicas, averaged over replicas of equal size) is
    again the global mean.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "global_token_loss") -> None:
        super().__init__(name=name, reduction=None)
        self.label_smoothing = label_smoothing

    def __call__(self, y_true: tf.Tensor, y_pred: tf.Tensor, sample_weight: tf.Tensor | None = None) -> tf.Tensor:
        # Keras' Loss.__call__ would turn the logits' Keras mask into weights and reduce again:
        # the padding mask is applied here, and the result is already the scalar loss.
        if sample_weight is not None:
            raise ValueError("GlobalTokenLoss takes no sample weights")
        return self.call(y_true, y_pred)

    def call(self, y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        y_true = tf.cast(y_true, tf.int32)
        mask = tf.cast(y_true != 0, tf.float32)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
        nll = -tf.gather(logp, y_true, batch_dims=2)
        ls = self.label_smoothing
        per_word = nll if ls == 0.0 else (1.0 - ls) * nll + ls * -tf.reduce_mean(logp, axis=-1)
        return tf.reduce_sum(per_word * mask) / tf.maximum(_global_count(tf.reduce_sum(mask)), 1.0)

    def get_config(self) -> dict:
        return {"label_smoothing": self.label_smoothing, "name": self.name}


def masked_nll(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Plain next-word cross-entropy over real positions (comparable across label smoothing)."""
    return smoothed_masked_loss(0.0)(y_true, y_pred)


def compile_model(
    model: keras.Model, learning_rate: float, label_smoothing: float = 0.0, replicas: int = 1
) -> None:
    """Adam + cross-entropy that ignores padding (class 0): padding never leaks into the loss.

    With `replicas` > 1 (compile inside the strategy's scope), the loss is normalised by the
    global count of real tokens (:class:`GlobalTokenLoss`)."""
    if replicas > 1:
        loss = GlobalTokenLoss(label_smoothing)
    elif label_smoothing == 0.0:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    else:
        loss = smoothed_masked_loss(label_smoothing)
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
    checkpoint: tuple[CheckpointFolder, int, EpochShuffle] | None = None,
) -> FitResult:
    """Fit with early stopping on validation loss; the model ends with its best weights.

    With `lr_factor` < 1 the learning rate is multiplied by it whenever the validation loss
    has not improved for `lr_patience` epochs. With `checkpoint` (folder, member, the train
    dataset's shuffle) the whole state is saved after every epoch, and a saved state of the
    member is resumed from: the result is bit for bit that of an uninterrupted fit.
    """
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True
    )
    plateau = (keras.callbacks.ReduceLROnPlateau("val_loss", factor=lr_factor, patience=lr_patience)
               if lr_factor < 1.0 else None)
    callbacks = list(callbacks or [])
    saved: dict[str, list[float]] = {}
    initial_epoch, keeper = 0, []
    if checkpoint is not None:
        folder, member, shuffle = checkpoint
        state = folder.load(member)
        if state is not None and state.done:
            raise ValueError(f"{folder.path(member)}: member {member + 1} is finished; load it with finished_member")
        if state is not None:
            saved = state.meta["history"]
            initial_epoch = epochs if state.meta["stop_training"] else state.epoch
            shuffle.resume(state.epoch, state.meta["shuffle"])
            replay_epochs(callbacks, saved, state.epoch)  # the epochs already run (curves)
        keeper = [EpochCheckpoint(folder, member, shuffle, stop, plateau, state)]
    hist = model.fit(
        train, validation_data=val, epochs=epochs, initial_epoch=initial_epoch,
        callbacks=[stop, *([plateau] if plateau else []), *callbacks, *keeper],
        verbose=verbose, shuffle=False,  # the dataset reshuffles itself every epoch
    )
    history = {k: saved.get(k, []) + list(hist.history.get(k, [])) for k in {*saved, *hist.history}}
    val_loss = history["val_loss"]
    best = int(np.argmin(val_loss))
    return FitResult(best + 1, float(val_loss[best]), len(val_loss), history)


def _assign(variables: list, values: list[np.ndarray], what: str) -> None:
    if len(variables) != len(values):
        raise ValueError(f"checkpoint: {len(values)} saved {what} arrays for {len(variables)} variables")
    for v, x in zip(variables, values):
        if tuple(v.shape) != x.shape:
            raise ValueError(f"checkpoint: saved {what} array of shape {x.shape} for {v.path} {tuple(v.shape)}")
        v.assign(x)


def _optimizer_variables(model: keras.Model) -> list:
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    return list(opt.variables)


_STOP_STATE = ("wait", "best", "best_epoch", "stopped_epoch")
_PLATEAU_STATE = ("wait", "best", "cooldown_counter")


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a member's whole training state after every epoch (it runs last, once early
    stopping and the learning-rate plateau have updated), and puts a saved `state` back when
    training starts (after those callbacks reset theirs): weights and the dropout generators'
    states, the optimizer's variables (moments, step, learning rate), early stopping's counters
    and best weights, the plateau's counters, the data order's generator and the history."""

    def __init__(self, folder: CheckpointFolder, member: int, shuffle: EpochShuffle,
                 stop: keras.callbacks.EarlyStopping, plateau: keras.callbacks.ReduceLROnPlateau | None,
                 state: MemberState | None) -> None:
        super().__init__()
        self.folder, self.member, self.shuffle = folder, member, shuffle
        self.stop, self.plateau, self.state = stop, plateau, state
        self.history: dict[str, list[float]] = {k: list(v) for k, v in state.meta["history"].items()} if state else {}

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        s = self.state
        if s is None:
            return
        _assign(list(self.model.variables), s.arrays.get("model", []), "model")
        _assign(_optimizer_variables(self.model), s.arrays.get("optimizer", []), "optimizer")
        for name, cb, keys in (("stop", self.stop, _STOP_STATE), ("plateau", self.plateau, _PLATEAU_STATE)):
            if cb is not None:
                for k in keys:
                    setattr(cb, k, s.meta[name][k])
        self.stop.best_weights = list(s.arrays["best"]) if "best" in s.arrays else None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))

        def states(cb, keys):
            return {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                    for k in keys for v in [getattr(cb, k)]} if cb is not None else None

        arrays = {"model": [np.asarray(v.numpy()) for v in self.model.variables],
                  "optimizer": [np.asarray(v.numpy()) for v in _optimizer_variables(self.model)]}
        if self.stop.best_weights is not None:
            arrays["best"] = [np.asarray(w) for w in self.stop.best_weights]
        meta = {"history": self.history, "stop": states(self.stop, _STOP_STATE),
                "plateau": states(self.plateau, _PLATEAU_STATE), "shuffle": self.shuffle.state_after(epoch),
                "stop_training": bool(self.model.stop_training)}
        self.folder.save(self.member, MemberState(epoch + 1, arrays, meta))


# ---------------------------------------------------------------- devices and ensemble members


def distribution(devices: int) -> tf.distribute.Strategy | None:
    """The strategy for `train.devices`: MirroredStrategy over N GPUs (or, without GPUs, N
    logical CPU devices, as tests configure them) when N > 1; 0 = every GPU when there are
    several; None = one device (plain Keras)."""
    gpus = tf.config.list_logical_devices("GPU")
    if devices == 0:
        devices = len(gpus) if len(gpus) > 1 else 1
    if devices == 1:
        return None
    pool = gpus or tf.config.list_logical_devices("CPU")
    if len(pool) < devices:
        raise ValueError(
            f"train.devices={devices} but only {len(pool)} {'GPU' if gpus else 'CPU'} device(s) are visible"
        )
    return tf.distribute.MirroredStrategy([d.name for d in pool[:devices]])


@dataclass(frozen=True)
class TrainData:
    """Caption ids and their feature rows (train and dev), and the features: the feature file,
    streamed in windows (captioner.training.batches, what the train stage gives), or an in-memory array."""

    train_ids: np.ndarray
    train_rows: np.ndarray
    dev_ids: np.ndarray
    dev_rows: np.ndarray
    features: np.ndarray | FeatureFile

    @property
    def feature_dim(self) -> int:
        return self.features.dim if isinstance(self.features, FeatureFile) else int(self.features.shape[1])

    def datasets(self, batch_size: int, bucket_width: int, seed: int | EpochShuffle, window_mb: float,
                 max_batches: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        """(train, dev) datasets: train reshuffled every epoch from `seed` (or an
        :class:`EpochShuffle`), dev in a fixed order."""
        if isinstance(self.features, FeatureFile):
            window = window_groups(self.features, window_mb)
            return tuple(  # type: ignore[return-value]
                make_streamed_dataset(self.features, ids, rows, batch_size, bucket_width, window, s, max_batches)
                for ids, rows, s in ((self.train_ids, self.train_rows, seed), (self.dev_ids, self.dev_rows, None))
            )
        return tuple(  # type: ignore[return-value]
            make_dataset(ids, rows, self.features, batch_size, bucket_width, s, max_batches)
            for ids, rows, s in ((self.train_ids, self.train_rows, seed), (self.dev_ids, self.dev_rows, None))
        )


@dataclass(frozen=True)
class MemberJob:
    """One ensemble member's fit: picklable (`build` must be too), so an engine may run it in
    another process. `batch_size` is per device."""

    member: int
    seed: int
    build: Callable[[], keras.Model]
    precision: str = "float32"
    learning_rate: float = 1e-3
    label_smoothing: float = 0.0
    batch_size: int = 64
    bucket_width: int = 4
    epochs: int = 1
    patience: int = 1
    lr_factor: float = 1.0
    lr_patience: int = 1
    devices: int = 0
    window_mb: float = 256.0  # streamed features: stored bytes per window of row groups
    max_batches: int = 0  # > 0: at most this many batches per epoch (smoke runs, benchmarks)
    checkpoints: str = ""  # a CheckpointFolder's path: save every epoch there, resume from it ("": off)
    options: dict = field(default_factory=dict)  # room for engine settings; unused by the fit


def compiled_member(job: MemberJob, replicas: int = 1) -> keras.Model:
    """A fresh member of `job`, built and compiled in its precision (call inside a strategy's
    scope for several replicas); seeding is the caller's (:func:`train_member` seeds first)."""
    with dtype_policy(job.precision):
        model = job.build()
        compile_model(model, job.learning_rate, job.label_smoothing, replicas)
    return model


def replay_epochs(callbacks: Sequence[keras.callbacks.Callback], history: Mapping[str, Sequence[float]],
                  epochs: int | None = None) -> None:
    """Give `callbacks` the first `epochs` (default: all) epochs of a fit's `history` as if they had
    run here: a resumed fit's earlier epochs, a finished member's, a remote member's (curves)."""
    for e in range(len(history["loss"]) if epochs is None else epochs):
        for cb in callbacks:
            cb.on_epoch_end(e, {k: v[e] for k, v in history.items()})


def train_member(
    job: MemberJob, data: TrainData, callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | str = 2,
) -> tuple[keras.Model, FitResult]:
    """Seed, build, compile and fit one member (under a MirroredStrategy when `job.devices`
    asks for several); returns the float32 model with its best epoch's weights.

    With `job.checkpoints`, the fit saves its state after every epoch and resumes from a saved
    one; a member whose checkpoint says it is finished is rebuilt from it, not trained."""
    folder = CheckpointFolder(Path(job.checkpoints), "train") if job.checkpoints else None
    if folder is not None and (done := finished_member(job, folder)) is not None:
        model, result = done
        replay_epochs(callbacks or [], result.history, result.epochs_run)  # its epochs (curves)
        return done
    keras.utils.set_random_seed(job.seed)
    strategy = distribution(job.devices)
    replicas = strategy.num_replicas_in_sync if strategy else 1
    with strategy.scope() if strategy else _nothing():
        model = compiled_member(job, replicas)
    shuffle = EpochShuffle(job.seed)
    train, dev = data.datasets(job.batch_size * replicas, job.bucket_width, shuffle, job.window_mb,
                               job.max_batches)
    result = fit(model, train, dev, job.epochs, job.patience, callbacks=callbacks, verbose=verbose,
                 lr_factor=job.lr_factor, lr_patience=job.lr_patience,
                 checkpoint=(folder, job.member, shuffle) if folder is not None else None)
    if job.precision != "float32":  # saved float32: decoding and the CLI never see bfloat16
        model = float32_copy(model, job.build)
    if folder is not None:
        arrays = {"final": [np.asarray(v.numpy()) for v in model.variables]}
        optimizer = getattr(model, "optimizer", None)  # None: the float32 copy of a mixed-precision member
        if optimizer is not None and optimizer.built:
            arrays["final_optimizer"] = [np.asarray(v.numpy()) for v in optimizer.variables]
        folder.save(job.member, MemberState(result.epochs_run, arrays, {
            "result": {"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                       "epochs_run": result.epochs_run, "history": result.history}}, done=True))
    return model, result


def finished_member(job: MemberJob, folder: CheckpointFolder) -> tuple[keras.Model, FitResult] | None:
    """Member `job.member` as :func:`train_member` returned it, rebuilt from its checkpoint in
    `folder` if that says it is finished (else None): float32, compiled with its optimizer's
    state when it trained in float32."""
    state = folder.load(job.member)
    if state is None or not state.done:
        return None
    with dtype_policy("float32"):
        model = job.build()
    if job.precision == "float32":
        compile_model(model, job.learning_rate, job.label_smoothing)
    _assign(list(model.variables), state.arrays["final"], "model")
    if "final_optimizer" in state.arrays:
        _assign(_optimizer_variables(model), state.arrays["final_optimizer"], "optimizer")
    r = state.meta["result"]
    return model, FitResult(r["best_epoch"], r["best_val_loss"], r["epochs_run"], r["history"])


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class CurveLogger(keras.callbacks.Callback):
    """Rewrites `folder/<metric>.tsv` after every epoch (readable while training runs; the
    layout is captioner.training.curves')."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.rows: dict[str, list[tuple[int, float, float]]] = {}

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        logs = logs or {}
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, value in logs.items():
            if name.startswith("val_") or f"val_{name}" not in logs:
                continue  # validation columns ride with their train metric; learning_rate has none
            self.rows.setdefault(name, []).append((epoch + 1, float(value), float(logs[f"val_{name}"])))
            lines = ["epoch\ttrain\tvalidation"] + [f"{e}\t{t:.6g}\t{v:.6g}" for e, t, v in self.rows[name]]
            (self.folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")

