"""A faithful re-implementation of the seed's training approach (the classic Keras "merge"
captioning tutorial), for side-by-side comparison with `captioner.training.fit`.

* one training sample per caption prefix: (image feature, prefix) -> next word;
* every prefix pre-padded (`pad_sequences`' default) to the longest caption's length;
* one copy of the image feature per sample, and a one-hot target per sample (to_categorical);
* the model: feature -> dropout -> dense(relu); prefix -> embedding(mask_zero) -> dropout ->
  LSTM (last state); add -> dense(relu) -> dense(softmax); categorical cross-entropy, Adam.

Same sizes as the project's model (embedding_dim, units, dropout, learning rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from captioner.training.batches import caption_lengths


def build_seed_model(vocab_size: int, feature_dim: int, max_length: int, embedding_dim: int,
                     units: int, dropout: float, learning_rate: float) -> keras.Model:
    inputs1 = keras.Input((feature_dim,))
    fe1 = layers.Dropout(dropout)(inputs1)
    fe2 = layers.Dense(units, activation="relu")(fe1)
    inputs2 = keras.Input((max_length,))
    se1 = layers.Embedding(vocab_size, embedding_dim, mask_zero=True)(inputs2)
    se2 = layers.Dropout(dropout)(se1)
    se3 = layers.LSTM(units)(se2)
    decoder1 = layers.add([fe2, se3])
    decoder2 = layers.Dense(units, activation="relu")(decoder1)
    outputs = layers.Dense(vocab_size, activation="softmax")(decoder2)
    model = keras.Model(inputs=[inputs1, inputs2], outputs=outputs)
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(learning_rate))
    return model


@dataclass
class SeedSamples:
    """The seed's materialised training set: X1 features, X2 padded prefixes, y targets."""

    x1: np.ndarray  # (n, D) float32, one feature copy per sample
    x2: np.ndarray  # (n, max_length) int32, pre-padded prefixes
    y: np.ndarray | None  # (n, V) float32 one-hot, or None when only `words` is needed
    words: np.ndarray  # (n,) int32 target ids

    @property
    def nbytes(self) -> int:
        return self.x1.nbytes + self.x2.nbytes + (0 if self.y is None else self.y.nbytes)


def seed_samples(ids: np.ndarray, image_rows: np.ndarray, features: np.ndarray, max_length: int,
                 vocab_size: int, one_hot: bool = True) -> SeedSamples:
    """Every (prefix -> next word) pair of every caption (row of `ids`: startseq .. endseq, 0-padded)."""
    lengths = caption_lengths(ids)
    n = int((lengths - 1).sum())
    x2 = np.zeros((n, max_length), np.int32)
    words = np.empty(n, np.int32)
    sample_image = np.empty(n, np.int64)
    k = 0
    for row, length in enumerate(lengths):
        for i in range(1, int(length)):
            x2[k, max_length - i :] = ids[row, :i]  # pre-padding
            words[k] = ids[row, i]
            sample_image[k] = image_rows[row]
            k += 1
    x1 = features[sample_image].astype(np.float32)
    y = None
    if one_hot:
        y = np.zeros((n, vocab_size), np.float32)
        y[np.arange(n), words] = 1.0
    return SeedSamples(x1, x2, y, words)


def seed_bytes(n_samples: int, feature_dim: int, max_length: int, vocab_size: int) -> int:
    """Memory of the seed's materialised arrays: float32 features, int32 prefixes, float32 one-hot."""
    return n_samples * (4 * feature_dim + 4 * max_length + 4 * vocab_size)


def seed_val_nll(model: keras.Model, samples: SeedSamples, batch_size: int = 1024) -> float:
    """Mean negative log-likelihood per predicted word (inference mode)."""
    probs = model.predict([samples.x1, samples.x2], batch_size=batch_size, verbose=0)
    p = probs[np.arange(len(samples.words)), samples.words]
    return float(-np.log(np.clip(p, 1e-7, 1.0)).mean())
