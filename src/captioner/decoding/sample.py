"""Captions drawn from a model's next-word distribution (temperature 1), or its greedy captions,
for a whole batch in one compiled loop over captioner.model.step's public graph step: what
self-critical training samples and rewards (captioner.training.scst)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from captioner.datasets.text import END, PAD, START, UNK, Vocabulary
from captioner.model.step import StepDecoder

__all__ = ["Sampler", "banned_logits"]

_BANNED = -1e9  # added to the logits of words that are never sampled



def banned_logits(vocab: Vocabulary) -> np.ndarray:
    """(vocab,) float32: 0, or a large negative number at padding, startseq and <unk>."""
    out = np.zeros(len(vocab), np.float32)
    out[[vocab.index[t] for t in (PAD, START, UNK)]] = _BANNED
    return out



class Sampler:
    """Captions from one model (or an ensemble's averaged probabilities): K samples per image
    at temperature 1, or the greedy caption, for a whole batch in one compiled loop."""

    def __init__(self, models: keras.Model | Sequence[keras.Model], vocab: Vocabulary, max_length: int, seed: int = 0):
        self.decoder = StepDecoder(models)
        self.max_length = max_length
        self.start_id, self.end_id = vocab.index[START], vocab.index[END]
        self.banned = tf.constant(banned_logits(vocab))  # padding, startseq, <unk>: never drawn
        self._rng = tf.random.Generator.from_seed(seed)
        spec = [tf.TensorSpec((None, self.decoder.feature_dim), tf.float32), tf.TensorSpec((), tf.int32)]
        self._sample = tf.function(lambda f, k: self._loop(f, k, greedy=False), input_signature=spec)
        self._greedy = tf.function(lambda f, k: self._loop(f, k, greedy=True), input_signature=spec)

    @property
    def generator(self) -> tf.random.Generator:
        """The samples' random generator (its `state` variable is what a training checkpoint keeps)."""
        return self._rng

    def _loop(self, features: tf.Tensor, k: tf.Tensor, greedy: bool):
        image, h, c = self.decoder.graph_start(features)
        image, h, c = (tf.repeat(x, k, axis=0) for x in (image, h, c))
        n = tf.shape(h)[0]
        words = tf.fill([n], tf.constant(self.start_id, tf.int32))
        done = tf.zeros([n], tf.bool)
        logprob = tf.zeros([n], tf.float32)
        steps = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
        last = self.max_length  # step max_length + 1 may only end the caption
        for t in tf.range(last + 1):
            logp, h, c, _ = self.decoder.graph_step(image, words, h, c)
            logp = tf.nn.log_softmax(logp + self.banned)
            if greedy:
                nxt = tf.argmax(logp, axis=1, output_type=tf.int32)
            else:
                seed = self._rng.make_seeds(1)[:, 0]
                nxt = tf.cast(tf.random.stateless_categorical(logp, 1, seed)[:, 0], tf.int32)
            nxt = tf.where(done | ((t == last) & (nxt != self.end_id)), 0, nxt)
            logprob += tf.where(nxt > 0, tf.gather(logp, nxt, batch_dims=1), 0.0)
            steps = steps.write(t, nxt)
            done = done | (nxt == self.end_id) | (nxt == 0)
            words = nxt
            if tf.reduce_all(done):
                break
        return tf.transpose(steps.stack()), logprob

    def sample(self, features: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray]:
        """(N * samples, steps) int32 ids (image i's samples in rows i*samples...; zero after
        endseq) and the (N * samples,) log-probability of each caption."""
        ids, logprob = self._sample(tf.constant(features, tf.float32), tf.constant(samples, tf.int32))
        return ids.numpy(), logprob.numpy()

    def greedy(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The greedy caption of each image, as :meth:`sample` with one sample."""
        ids, logprob = self._greedy(tf.constant(features, tf.float32), tf.constant(1, tf.int32))
        return ids.numpy(), logprob.numpy()

