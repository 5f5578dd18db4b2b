"""Shared fixtures: a tiny trained merge model on a toy colour task."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from captioner.model import build_merge_model  # noqa: E402
from captioner.sequences import encode_captions  # noqa: E402
from captioner.text import build_vocabulary  # noqa: E402
from captioner.training import compile_model, fit, make_dataset  # noqa: E402

COLOURS = ("red", "green", "blue", "yellow")


@pytest.fixture(scope="session")
def toy() -> dict:
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
    compile_model(model, 1e-2)
    train = make_dataset(ids, np.arange(n), feats, 16, 2, seed=0)
    val = make_dataset(ids, np.arange(n), feats, 16, 2, seed=None)
    result = fit(model, train, val, epochs=12, patience=3, verbose=0)
    return {"model": model, "vocab": vocab, "feats": feats, "cls": cls, "ids": ids, "result": result}
