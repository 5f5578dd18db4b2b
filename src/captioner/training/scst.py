"""Self-critical sequence training (SCST): fine-tune a captioner toward CIDEr-D by REINFORCE.

For a batch of images: sample K captions per image from the model (temperature 1, one
compiled step loop), reward each by its CIDEr-D against that image's references
(:mod:`captioner.training.rewards`, document frequencies fixed from the train references), subtract a
baseline, and take one optimiser step on

    loss = - mean over captions of (reward - baseline) x sum_t log p(w_t | w_<t, image)

with the log-probabilities from one masked teacher-forcing pass over the sampled captions
(padding after endseq is out of the loss). Baselines: ``"mean"``, the mean reward of the other
K - 1 samples of the same image (Luo 2020, "A better variant of self-critical sequence
training"); ``"greedy"``, the reward of the model's greedy caption (Rennie et al. 2017).

Works for merge and attention models (sampled by :class:`captioner.decoding.sample.Sampler`);
an ensemble is trained member by member, one :class:`ScstTrainer` each. Models must be
float32 (the saved copies, not a mixed-precision training model). Padding, startseq and
<unk> are never sampled; both the sampler and the loss renormalise over the other words, so
the loss's log-probabilities are exactly those the captions were drawn with.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from captioner.datasets.text import END, Vocabulary
from captioner.decoding.sample import Sampler
from captioner.training.checkpoint import CheckpointFolder, MemberState
from captioner.training.rewards import CiderD

__all__ = [
    "CaptionReward", "EpochResult", "ScstConfig", "ScstTrainer", "StepResult", "caption_length", "finetune",
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


def finetune(
    models: Sequence[keras.Model],
    features: np.ndarray,
    train: tuple[Sequence[Sequence[Sequence[str]]], np.ndarray],
    dev: tuple[Sequence[Sequence[Sequence[str]]], np.ndarray],
    vocab: Vocabulary,
    config: ScstConfig,
    epochs: int,
    progress: bool = True,
    log=print,
    checkpoints: CheckpointFolder | None = None,
) -> list[dict]:
    """SCST for `epochs` epochs on every model (an ensemble member by member, seed + member),
    each in place; keeps each member's epoch with the best dev CIDEr-D of its greedy captions
    (epoch 0: the cross-entropy model). `train` / `dev`: (references of each image, its row in
    `features`). Rewards use the train references' document frequencies; the dev CIDEr-D the
    dev references' (as pycocoevalcap). Returns each member's history.

    With `checkpoints`, each member's state is saved after every epoch and once it is finished;
    a saved state is resumed from (bit for bit), a finished member only gets its weights back."""
    from dataclasses import replace

    train_reward = CaptionReward(CiderD(train[0]), train[0], vocab)
    dev_reward = CaptionReward(CiderD(dev[0]), dev[0], vocab)
    out = []
    for m, model in enumerate(models):
        state = checkpoints.load(m) if checkpoints is not None else None
        if state is not None and state.done:
            for v, x in zip(model.variables, state.arrays["final"], strict=True):
                v.assign(x)
            out.append(state.meta["member"])
            log(f"scst: member {m}: finished before (best epoch {state.meta['member']['best_epoch']})")
            continue
        trainer = ScstTrainer(model, vocab, train_reward, replace(config, seed=config.seed + m))
        if state is not None:
            trainer.restore(state.arrays, state.meta["trainer"])
            best, best_epoch, history = state.meta["best"], state.meta["best_epoch"], state.meta["history"]
            weights = list(state.arrays["best"])
            log(f"scst: member {m} resumes at epoch {state.epoch + 1} of {epochs}")
        else:
            best = trainer.mean_reward(features, dev[1], reward=dev_reward)
            weights, best_epoch = model.get_weights(), 0
            history = [{"epoch": 0, "dev_cider": round(best, 5)}]
            log(f"scst: member {m}: dev CIDEr-D {best:.4f} after cross-entropy")
        for epoch in range(state.epoch + 1 if state is not None else 1, epochs + 1):
            r = trainer.epoch(features, train[1], progress)
            dev_cider = trainer.mean_reward(features, dev[1], reward=dev_reward)
            history.append({"epoch": epoch, "reward": round(r.reward, 5), "baseline": round(r.baseline, 5),
                            "length": round(r.length, 3), "seconds": round(r.seconds, 1),
                            "dev_cider": round(dev_cider, 5)})
            log(f"scst: member {m} epoch {epoch}/{epochs}: train reward {r.reward:.4f}, sampled length "
                f"{r.length:.1f}, dev CIDEr-D {dev_cider:.4f} ({r.seconds:.0f} s)")
            if dev_cider > best:
                best, weights, best_epoch = dev_cider, model.get_weights(), epoch
            if checkpoints is not None:
                arrays, trainer_state = trainer.state()
                checkpoints.save(m, MemberState(epoch, {**arrays, "best": [np.asarray(w) for w in weights]}, {
                    "trainer": trainer_state, "best": best, "best_epoch": best_epoch, "history": history}))
        model.set_weights(weights)
        out.append({"member": m, "best_epoch": best_epoch, "best_dev_cider": round(best, 5), "epochs": history})
        if checkpoints is not None:
            checkpoints.save(m, MemberState(epochs, {"final": [np.asarray(v.numpy()) for v in model.variables]},
                                            {"member": out[-1]}, done=True))
    return out


def split_references(text_dir: str | os.PathLike[str], feature_ids: Sequence[str],
                     splits: Sequence[str] = ("train", "dev")) -> dict[str, tuple[list[list[list[str]]], np.ndarray]]:
    """By split: the references of each image with features and its feature row, from the
    clean_text tables (`<text_dir>/<split>.parquet`)."""
    import pandas as pd

    out = {}
    for split in splits:
        table = pd.read_parquet(Path(text_dir) / f"{split}.parquet", columns=["image_id", "caption_no", "caption"])
        table = table.sort_values(["image_id", "caption_no"])
        out[split] = references_by_row(table["image_id"].astype(str).tolist(), table["caption"].tolist(), feature_ids)
    return out


