"""Shared fixtures: tiny trained merge and attention models on toy colour tasks."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from captioner.model.build import build_attention_model, build_merge_model  # noqa: E402
from captioner.datasets.sequences import encode_captions  # noqa: E402
from captioner.datasets.text import build_vocabulary  # noqa: E402
from captioner.training.fit import compile_model, fit
from captioner.training.batches import make_dataset

COLOURS = ("red", "green", "blue", "yellow")
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip a test whose prerequisite `what` is missing on a developer's machine; fail it on CI
    (`CI=true`), where `.ci/run` provides every prerequisite, so CI never goes green on a skip."""
    if not available:
        if ON_CI:
            pytest.fail(f"CI=true but {what} is missing: .ci/run must provide it", pytrace=False)
        pytest.skip(f"{what} is missing")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end (`slow`) tests first, so that `make test`'s two xdist workers start on the
    long ones and finish together; the order within each kind is kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def fit_toy(model: keras.Model, ids: np.ndarray, feats: np.ndarray, epochs: int, label_smoothing: float = 0.0):
    """Compile and fit a toy model on all rows (validated on the same rows), as the train stage does."""
    compile_model(model, 1e-2, label_smoothing)
    rows = np.arange(len(ids))
    train = make_dataset(ids, rows, feats, 16, 2, seed=0)
    val = make_dataset(ids, rows, feats, 16, 2, seed=None)
    return fit(model, train, val, epochs=epochs, patience=3, verbose=0)


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
    result = fit_toy(model, ids, feats, epochs=12)
    return {"model": model, "vocab": vocab, "feats": feats, "cls": cls, "ids": ids, "result": result}


TOY_REGIONS, TOY_CHANNELS = 4, 8


@pytest.fixture(scope="session")
def toy_attention() -> dict:
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
