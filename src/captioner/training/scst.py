"""Self-critical sequence training (SCST): fine-tune a captioner toward CIDEr-D by REINFORCE.

For a batch of images: sample K captions per image from the model (temperature 1, one
compiled step loop), reward each by its CIDEr-D against that image's references
(:mod:`captioner.decoding.cider`, document frequencies fixed from the train references), subtract a
baseline, and take one optimiser step on

    loss = - mean over captions of (reward - baseline) x sum_t log p(w_t | w_<t, image)

with the log-probabilities from one masked teacher-forcing pass over the sampled captions
(padding after endseq is out of the loss). Baselines: ``"mean"``, the mean reward of the other
K - 1 samples of the same image (Luo 2020, "A better variant of self-critical sequence
training"); ``"greedy"``, the reward of the model's greedy caption (Rennie et al. 2017).

Works for merge and attention models (sampled by :class:`captioner.decoding.sample.Sampler`);
an ensemble is trained epoch by epoch, one :class:`ScstTrainer` per member, and the epoch is
chosen by the whole ensemble's dev CIDEr-D under the decoding it will be evaluated with
(:func:`finetune`), not by each member's greedy captions. Models must be
float32 (the saved copies, not a mixed-precision training model). Padding, startseq and
<unk> are never sampled; both the sampler and the loss renormalise over the other words, so
the loss's log-probabilities are exactly those the captions were drawn with.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from captioner.config.decoding import DecodingConfig
from captioner.datasets.text import END, Vocabulary
from captioner.decoding.sample import Sampler
from captioner.training.checkpoint import CheckpointFolder, MemberState
from captioner.decoding.cider import CiderD

__all__ = [
    "CaptionReward", "EpochResult", "ScstConfig", "ScstTrainer", "StepResult", "caption_length", "ensemble_dev_cider",
    "finetune",
    "leave_one_out_mean", "references_by_row", "sequence_logprob", "split_references", "teacher_forcing",
]

Baseline = Literal["mean", "greedy"]
@dataclass(frozen=True)
class ScstConfig:
    """SCST settings: samples per image, longest caption (words, endseq not counted),
    baseline, Adam learning rate, images per step, seed of the sampling and the image order."""

    samples: int = 5
    max_length: int = 20
    baseline: Baseline = "mean"
    learning_rate: float = 5e-5
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.baseline not in ("mean", "greedy"):
            raise ValueError(f"scst baseline must be 'mean' or 'greedy', got {self.baseline!r}")
        if self.samples < (2 if self.baseline == "mean" else 1):
            raise ValueError(f"scst samples must be >= 2 with the 'mean' baseline, got {self.samples}")
        if self.max_length < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("scst max_length and batch_size must be >= 1 and learning_rate > 0")


def caption_length(ids: np.ndarray, end_id: int) -> np.ndarray:
    """Words of each row of sampled ids before its endseq (or padding, or the row's end)."""
    stop = (ids == end_id) | (ids == 0)
    return np.where(stop.any(axis=1), stop.argmax(axis=1), ids.shape[1])


def leave_one_out_mean(rewards: np.ndarray, samples: int) -> np.ndarray:
    """Each sample's baseline: the mean reward of the other samples of its image (rows of
    `rewards` grouped by image, `samples` >= 2 each)."""
    r = np.asarray(rewards, np.float64).reshape(-1, samples)
    return ((r.sum(axis=1, keepdims=True) - r) / (samples - 1)).ravel()


def teacher_forcing(ids: np.ndarray, start_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of sampled id rows (zero-padded after endseq), trimmed to the longest:
    targets are the rows, inputs the rows shifted right behind startseq."""
    width = max(int((ids != 0).sum(axis=1).max(initial=0)), 1)
    targets = ids[:, :width].astype(np.int32)
    inputs = np.concatenate([np.full((len(ids), 1), start_id, np.int32), targets[:, :-1]], axis=1)
    return inputs, targets


def sequence_logprob(
    model: keras.Model, features: tf.Tensor, inputs: tf.Tensor, targets: tf.Tensor, banned: tf.Tensor
) -> tf.Tensor:
    """(B,) sum over the real (non-zero) targets of log p(target), one teacher-forcing pass
    (no dropout), over the words that can be sampled."""
    logits = tf.cast(model([features, inputs], training=False), tf.float32) + banned
    logp = tf.gather(tf.nn.log_softmax(logits), targets, batch_dims=2)
    return tf.reduce_sum(tf.where(targets != 0, logp, 0.0), axis=1)


class CaptionReward:
    """CIDEr-D of sampled id rows against the references of their images.

    `references[i]`: the reference captions (token lists, cleaned like the training text) of
    image i, the image of feature row i; `scorer` holds the document frequencies (the train
    references')."""

    def __init__(self, scorer: CiderD, references: Sequence[Sequence[Sequence[str]]], vocab: Vocabulary) -> None:
        self.scorer = scorer
        self.refs = scorer.references(references)
        self.table = scorer.word_ids(vocab.tokens)  # model id -> scorer word id
        self.end_id = vocab.index[END]

    def __call__(self, ids: np.ndarray, images: np.ndarray) -> np.ndarray:
        """(M,) float64 reward of each row of model ids (words up to endseq)."""
        return self.scorer.score_ids(self.table[ids], caption_length(ids, self.end_id), images, self.refs)


@dataclass(frozen=True)
class StepResult:
    """One SCST step: mean sampled reward, mean baseline, loss, mean sampled length."""

    reward: float
    baseline: float
    loss: float
    length: float


@dataclass(frozen=True)
class EpochResult:
    """An SCST epoch: means over its steps (weighted by images), steps and seconds."""

    reward: float
    baseline: float
    loss: float
    length: float
    steps: int
    seconds: float


class ScstTrainer:
    """SCST for one float32 captioner (merge or attention); the model is trained in place."""

    def __init__(self, model: keras.Model, vocab: Vocabulary, reward: CaptionReward, config: ScstConfig) -> None:
        self.model, self.vocab, self.reward, self.config = model, vocab, reward, config
        self.sampler = Sampler(model, vocab, config.max_length, config.seed)
        self.optimizer = keras.optimizers.Adam(config.learning_rate)
        self.optimizer.build(model.trainable_variables)
        self._rng = np.random.default_rng(config.seed)
        self._banned = self.sampler.banned
        dim = int(model.inputs[0].shape[-1])
        self._train_step = tf.function(
            self._train_step_impl,
            input_signature=[
                tf.TensorSpec((None, dim), tf.float32),
                tf.TensorSpec((None, None), tf.int32),
                tf.TensorSpec((None, None), tf.int32),
                tf.TensorSpec((None,), tf.float32),
            ],
        )

    def state(self) -> tuple[dict[str, list[np.ndarray]], dict]:
        """What a checkpoint keeps of this trainer: (arrays, JSON-able), the model's and the
        optimiser's variables, the sampler's and the image order's generators."""
        arrays = {"model": [np.asarray(v.numpy()) for v in self.model.variables],
                  "optimizer": [np.asarray(v.numpy()) for v in self.optimizer.variables],
                  "sampler": [self.sampler.generator.state.numpy()]}
        return arrays, {"order": self._rng.bit_generator.state}

    def restore(self, arrays: dict[str, list[np.ndarray]], meta: dict) -> None:
        """Put back a :meth:`state` of a trainer of the same model and config."""
        for what, variables in (("model", self.model.variables), ("optimizer", self.optimizer.variables)):
            if len(arrays[what]) != len(variables):
                raise ValueError(f"scst checkpoint: {len(arrays[what])} {what} arrays for {len(variables)} variables")
            for v, x in zip(variables, arrays[what]):
                v.assign(x)
        self.sampler.generator.state.assign(arrays["sampler"][0])
        self._rng.bit_generator.state = meta["order"]

    def loss(self, features: tf.Tensor, inputs: tf.Tensor, targets: tf.Tensor, advantages: tf.Tensor) -> tf.Tensor:
        """- mean over captions of advantage x the caption's log-probability (padding ignored)."""
        logprob = sequence_logprob(self.model, features, inputs, targets, self._banned)
        return -tf.reduce_mean(advantages * logprob)

    def _train_step_impl(self, features, inputs, targets, advantages):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.loss(features, inputs, targets, advantages)
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def advantages(
        self, rewards: np.ndarray, features: np.ndarray, images: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(advantage, baseline) of each sample; rewards (N * K,) with image i's K samples together."""
        if self.config.baseline == "mean":
            base = leave_one_out_mean(rewards, self.config.samples)
        else:
            greedy, _ = self.sampler.greedy(features)
            base = np.repeat(self.reward(greedy, images), self.config.samples)
        return rewards - base, base

    def step(self, features: np.ndarray, images: np.ndarray) -> StepResult:
        """One SCST update on a batch: `features` (N, D) of images `images` (rows of the rewards' references)."""
        features = np.asarray(features, np.float32)
        k = self.config.samples
        ids, _ = self.sampler.sample(features, k)
        rewards = self.reward(ids, np.repeat(images, k))
        advantage, base = self.advantages(rewards, features, images)
        inputs, targets = teacher_forcing(ids, self.sampler.start_id)
        loss = self._train_step(np.repeat(features, k, axis=0), inputs, targets, advantage.astype(np.float32))
        length = caption_length(ids, self.sampler.end_id).mean()
        return StepResult(float(rewards.mean()), float(base.mean()), float(loss), float(length))

    def epoch(self, features: np.ndarray, rows: np.ndarray | None = None, progress: bool = True) -> EpochResult:
        """One pass over the references' images in a shuffled order, `config.batch_size` images
        per step, with a progress bar. Image i's features are row `rows[i]` of `features`
        (default: row i), so a features file is never copied."""
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        n = len(self.reward.refs)
        rows = np.arange(n) if rows is None else np.asarray(rows)
        if len(rows) != n:
            raise ValueError(f"scst: {len(rows)} feature rows for the {n} images of the references")
        order = self._rng.permutation(n)
        sums = np.zeros(4)
        batches = [order[i : i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
        with tqdm(total=len(order), desc="scst", unit="img", disable=not progress) as bar:
            for images in batches:
                res = self.step(features[rows[images]], images)
                sums += len(images) * np.array([res.reward, res.baseline, res.loss, res.length])
                bar.update(len(images))
                bar.set_postfix(reward=f"{res.reward:.3f}", length=f"{res.length:.1f}")
        means = sums / max(len(order), 1)
        return EpochResult(*(float(x) for x in means), len(batches), time.perf_counter() - t0)

    def mean_reward(
        self, features: np.ndarray, rows: np.ndarray | None = None, greedy: bool = True, batch_size: int = 256,
        reward: CaptionReward | None = None,
    ) -> float:
        """Mean CIDEr-D of the model's greedy (or sampled, `config.samples` per image) captions of
        every image of the training reward's references, or of `reward`'s (e.g. the dev
        references'); image i's features are row `rows[i]` of `features` (default: row i)."""
        reward = reward or self.reward
        n = len(reward.refs)
        rows = np.arange(n) if rows is None else np.asarray(rows)
        if len(rows) != n:
            raise ValueError(f"scst: {len(rows)} feature rows for the {n} images of the references")
        k = 1 if greedy else self.config.samples
        out = []
        for i in range(0, n, batch_size):
            f = np.asarray(features[rows[i : i + batch_size]], np.float32)
            ids = self.sampler.greedy(f)[0] if greedy else self.sampler.sample(f, k)[0]
            out.append(reward(ids, np.repeat(np.arange(i, i + len(f)), k)))
        return float(np.concatenate(out).mean())


def references_by_row(
    image_ids: Sequence[str], captions: Sequence[str], feature_ids: Sequence[str]
) -> tuple[list[list[list[str]]], np.ndarray]:
    """Group a split's wrapped captions (`startseq ... endseq`, one per `image_ids` entry, in
    caption order) by image: (references of each image with features, its feature row)."""
    from captioner.datasets.text import unwrap

    where = {str(img): i for i, img in enumerate(feature_ids)}
    refs: dict[str, list[list[str]]] = {}
    for img, caption in zip(image_ids, captions):
        if str(img) in where:
            refs.setdefault(str(img), []).append(unwrap(str(caption).split()))
    return list(refs.values()), np.array([where[i] for i in refs], np.int64)


def ensemble_dev_cider(models: Sequence[keras.Model], features: np.ndarray, rows: np.ndarray, reward: CaptionReward,
                       vocab: Vocabulary, decoding: DecodingConfig, batch_size: int = 256) -> float:
    """Mean CIDEr-D of the ensemble's captions of the reward's images (image i: feature row
    `rows[i]`), decoded as `decoding` says: what the pipeline's evaluation will see."""
    from captioner.decoding.search import generate_captions
    from captioner.model.step import StepDecoder

    caps = generate_captions(StepDecoder(list(models)), np.asarray(features[rows], np.float32), vocab, decoding,
                             batch_size, progress=False)
    return float(reward.scorer.score([c.words for c in caps], np.arange(len(caps)), reward.refs).mean())


def _finished(models: Sequence[keras.Model], states: Sequence[MemberState], log) -> dict:
    """The result of a run killed while its final weights were saved, the members set to their
    final weights (a member not saved as finished yet: its best weights, the same ones)."""
    for model, s in zip(models, states, strict=True):
        if not s.done:
            model.set_weights(list(s.arrays["best"]))
            continue
        for v, x in zip(model.variables, s.arrays["final"], strict=True):
            v.assign(x)
    result = next(s for s in states if s.done).meta["result"]
    log(f"scst: finished before (best epoch {result['best_epoch']})")
    return result


def _resumed(models: Sequence[keras.Model], trainers: Sequence[ScstTrainer],
             states: Sequence[MemberState | None], fresh: Callable[[int], dict]) -> tuple[dict, list, list, list]:
    """A killed run's (selection state, member histories, best weights, epoch each member was saved
    at), its trainers restored from the checkpoints `states` (None: a member not saved yet, which
    starts afresh with `fresh(member)` as its history)."""
    saved = [s for s in states if s is not None]
    if len(saved) == len(states):  # the oldest holds the selection state of the last full epoch
        shared = min(saved, key=lambda s: s.epoch).meta["ensemble"]
    else:  # killed while the first epoch's checkpoints were written: epoch 1 runs again
        xe = saved[0].meta["ensemble"]
        shared = {"history": xe["history"][:1], "xe": xe["xe"], "best": xe["xe"], "best_epoch": 0, "stale": 0}
    histories, best_weights, done_epochs = [], [], []
    for m, (trainer, s) in enumerate(zip(trainers, states)):
        if s is None:
            histories.append(fresh(m))
            best_weights.append(models[m].get_weights())
            done_epochs.append(0)
            continue
        trainer.restore(s.arrays, s.meta["trainer"])
        histories.append(s.meta["history"])
        best_weights.append(list(s.arrays["best"]))
        done_epochs.append(s.epoch)
    return shared, histories, best_weights, done_epochs


def finetune(
    models: Sequence[keras.Model],
    features: np.ndarray,
    train: tuple[Sequence[Sequence[Sequence[str]]], np.ndarray],
    dev: tuple[Sequence[Sequence[Sequence[str]]], np.ndarray],
    vocab: Vocabulary,
    config: ScstConfig,
    epochs: int,
    select: DecodingConfig = DecodingConfig(),
    patience: int = 1,
    progress: bool = True,
    log=print,
    checkpoints: CheckpointFolder | None = None,
) -> dict:
    """SCST of an ensemble (or one model), all members in place, epoch by epoch: in epoch e each
    member (seed + member) makes one pass over the train images; then the ensemble's dev
    captions, decoded as `select` says, are scored by CIDEr-D (:func:`ensemble_dev_cider`).
    The members end with the weights of the best such epoch (0: the cross-entropy models), and
    training stops after `patience` epochs without a better one, or after `epochs`. `train` /
    `dev`: (references of each image, its row in `features`). Rewards use the train references'
    document frequencies; dev CIDEr-D the dev references' (as pycocoevalcap).

    Returns ``{"members": [history of each member: greedy dev CIDEr-D and train reward by
    epoch], "ensemble": [dev CIDEr-D by epoch], "best_epoch", "epochs_run"}``.

    With `checkpoints`, every member's state is saved after each epoch's selection and once
    all are finished; a run killed in an epoch resumes at its start, bit for bit (a member
    already saved at that epoch is not trained again)."""
    from dataclasses import replace

    train_reward = CaptionReward(CiderD(train[0]), train[0], vocab)
    dev_reward = CaptionReward(CiderD(dev[0]), dev[0], vocab)
    trainers = [ScstTrainer(model, vocab, train_reward, replace(config, seed=config.seed + m))
                for m, model in enumerate(models)]
    states = [checkpoints.load(m) if checkpoints is not None else None for m in range(len(models))]

    def score() -> float:
        return ensemble_dev_cider(models, features, dev[1], dev_reward, vocab, select)

    def greedy_start(m: int) -> dict:
        cider = trainers[m].mean_reward(features, dev[1], reward=dev_reward)
        return {"member": m, "epochs": [{"epoch": 0, "dev_cider": round(cider, 5)}]}

    saved = [s for s in states if s is not None]
    if any(s.done for s in saved):
        return _finished(models, states, log)
    if saved:
        shared, histories, best_weights, done_epochs = _resumed(models, trainers, states, greedy_start)
        log(f"scst: resumes at epoch {len(shared['history'])} of {epochs}")
    else:
        histories = [greedy_start(m) for m in range(len(models))]
        first = score()
        shared = {"history": [{"epoch": 0, "dev_cider": round(first, 5)}], "xe": first, "best": first, "best_epoch": 0,
                  "stale": 0}
        best_weights = [model.get_weights() for model in models]
        done_epochs = [0] * len(models)
        log(f"scst: ensemble dev CIDEr-D {round(first, 5):.4f} after cross-entropy (beam {select.beam_width}); member greedy "
            + ", ".join(f"{h['epochs'][0]['dev_cider']:.4f}" for h in histories))
    epoch = len(shared["history"]) - 1
    while epoch < epochs and shared["stale"] < patience:
        epoch += 1
        for m, trainer in enumerate(trainers):
            if done_epochs[m] >= epoch:
                continue  # saved at this epoch before the run was killed
            r = trainer.epoch(features, train[1], progress)
            cider = trainer.mean_reward(features, dev[1], reward=dev_reward)
            histories[m]["epochs"].append({"epoch": epoch, "reward": round(r.reward, 5), "baseline": round(r.baseline, 5),
                                           "length": round(r.length, 3), "seconds": round(r.seconds, 1),
                                           "dev_cider": round(cider, 5)})
            log(f"scst: member {m} epoch {epoch}/{epochs}: train reward {r.reward:.4f}, sampled length "
                f"{r.length:.1f}, greedy dev CIDEr-D {cider:.4f} ({r.seconds:.0f} s)")
        ens = score()
        shared["history"].append({"epoch": epoch, "dev_cider": round(ens, 5)})
        better = ens > shared["best"]
        if better:
            shared.update(best=ens, best_epoch=epoch, stale=0)
            best_weights = [model.get_weights() for model in models]
        else:
            shared["stale"] += 1
        log(f"scst: epoch {epoch}/{epochs}: ensemble dev CIDEr-D {ens:.4f}"
            + (" (best)" if better else f" (best {shared['best']:.4f} at epoch {shared['best_epoch']})"))
        if checkpoints is not None:
            for m, trainer in enumerate(trainers):
                arrays, trainer_state = trainer.state()
                checkpoints.save(m, MemberState(epoch, {**arrays, "best": [np.asarray(w) for w in best_weights[m]]},
                                                {"trainer": trainer_state, "history": histories[m], "ensemble": shared}))
            done_epochs = [epoch] * len(models)
    for model, weights in zip(models, best_weights):
        model.set_weights(weights)
    result = {"members": histories, "ensemble": shared["history"], "best_epoch": shared["best_epoch"],
              "epochs_run": epoch}
    if checkpoints is not None:
        for m, model in enumerate(models):
            checkpoints.save(m, MemberState(epoch, {"final": [np.asarray(v.numpy()) for v in model.variables]},
                                            {"result": result}, done=True))
    return result


def split_references(text_dir: str | os.PathLike[str], feature_ids: Sequence[str],
                     splits: Sequence[str] = ("train", "dev")) -> dict[str, tuple[list[list[list[str]]], np.ndarray]]:
    """By split: the references of each image with features and its feature row, from the
    clean_text tables (`<text_dir>/<split>.parquet`)."""
    from captioner.datasets.text import read_references

    where = {str(img): i for i, img in enumerate(feature_ids)}
    out = {}
    for split in splits:
        refs = {img: r for img, r in read_references(text_dir, split).items() if img in where}
        out[split] = (list(refs.values()), np.array([where[img] for img in refs], np.int64))
    return out
