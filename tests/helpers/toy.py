"""Toy colour tasks and their tiny trained models (merge and attention), trained as the train
stage trains: what unit tests of decoding, training and SCST run on."""

from __future__ import annotations

import keras
import numpy as np

from captioner.datasets.sequences import encode_captions
from captioner.datasets.text import build_vocabulary
from captioner.model.build import build_attention_model, build_merge_model
from captioner.training.batches import make_dataset
from captioner.training.fit import compile_model, fit

COLOURS = ("red", "green", "blue", "yellow")



def fit_toy(model: keras.Model, ids: np.ndarray, feats: np.ndarray, epochs: int, label_smoothing: float = 0.0):
    """Compile and fit a toy model on all rows (validated on the same rows), as the train stage does."""
    compile_model(model, 1e-2, label_smoothing)
    rows = np.arange(len(ids))
    train = make_dataset(ids, rows, feats, 16, 2, seed=0)
    val = make_dataset(ids, rows, feats, 16, 2, seed=None)
    return fit(model, train, val, epochs=epochs, patience=3, verbose=0)



TOY_REGIONS, TOY_CHANNELS = 4, 8



def make_toy() -> dict:
    """A 4-class toy task: the feature says the colour, the caption names it."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 240
    cls = rng.integers(0, len(COLOURS), n)
    feats = np.eye(8, dtype=np.float32)[cls] + 0.05 * rng.standard_normal((n, 8)).astype(np.float32)
    caps = [
        f"startseq a {COLOURS[c]} thing endseq" if i % 3 else f"startseq the {COLOURS[c]} shape is here endseq"
        for i, c in enumerate(cls)
    ]
    vocab = build_vocabulary(caps, 1)
    ids = encode_captions(caps, vocab, 10)
    model = build_merge_model(len(vocab), 8, 16, 32, 0.1)
    result = fit_toy(model, ids, feats, epochs=12)
    return {"model": model, "vocab": vocab, "feats": feats, "cls": cls, "ids": ids, "result": result}


def make_toy_attention() -> dict:
    """The colour task over a grid: one of 4 regions holds the colour, the others hold noise."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    n = 320
    cls = rng.integers(0, len(COLOURS), n)
    where = rng.integers(0, TOY_REGIONS, n)
    grid = 0.05 * rng.standard_normal((n, TOY_REGIONS, TOY_CHANNELS)).astype(np.float32)
    grid[np.arange(n), where, cls] += 1.0
    grid[np.arange(n), where, 7] += 1.0  # "something is here"
    feats = grid.reshape(n, -1).astype(np.float16)  # stored like a float16 grid file
    caps = [f"startseq a {COLOURS[c]} thing endseq" for c in cls]
    vocab = build_vocabulary(caps, 1)
    ids = encode_captions(caps, vocab, 8)
    model = build_attention_model(len(vocab), TOY_REGIONS, TOY_CHANNELS, 16, 32, 16, 0.1, 0.1)
    result = fit_toy(model, ids, feats, epochs=15)
    return {"model": model, "vocab": vocab, "feats": feats, "cls": cls, "where": where, "ids": ids,
            "result": result}


def tiny_backbone(size: int, dim: int, filters: int):
    """A cheap deterministic CNN standing in for a real backbone, with the real backbones' call
    path: uint8 (N, size, size, 3) -> float32 (N, dim)."""
    from captioner.features.backbones import Backbone

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(dim)(x))
    return Backbone("tiny", size, dim, model, lambda b: np.asarray(b, np.float32) / 255.0)
