import keras
import numpy as np
import pytest

from captioner.model.build import build_merge_model
from captioner.datasets.sequences import encode_captions
from captioner.datasets.text import build_vocabulary
from captioner.training.batches import caption_lengths, make_batch, make_dataset, plan_batches
from captioner.training.fit import compile_model, fit
from tests.helpers.toy import COLOURS


def test_plan_covers_every_row_once_in_length_buckets() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 30, 500)
    plan = plan_batches(lengths, batch_size=32, bucket_width=4, rng=np.random.default_rng(0))
    rows = np.concatenate(plan)
    assert sorted(rows.tolist()) == list(range(500))
    assert all(len(b) <= 32 for b in plan)
    assert all(len(set((lengths[b] // 4).tolist())) == 1 for b in plan)
    # the number of batches does not depend on the shuffle; the order does
    other = plan_batches(lengths, 32, 4, np.random.default_rng(5))
    assert len(other) == len(plan) == len(plan_batches(lengths, 32, 4, None))
    assert any(not np.array_equal(a, b) for a, b in zip(plan, other))
    again = plan_batches(lengths, 32, 4, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(plan, again))


def test_batch_is_trimmed_and_shifted() -> None:
    ids = np.array([[2, 5, 6, 3, 0, 0, 0], [2, 7, 3, 0, 0, 0, 0]], np.int32)
    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    (f, x), y = make_batch(ids, np.array([2, 0]), feats, np.array([0, 1]))
    np.testing.assert_array_equal(f, feats[[2, 0]])
    np.testing.assert_array_equal(x, [[2, 5, 6], [2, 7, 3]])
    np.testing.assert_array_equal(y, [[5, 6, 3], [7, 3, 0]])
    np.testing.assert_array_equal(caption_lengths(ids), [4, 3])


def _val_loss(model: keras.Model, val) -> float:
    return model.evaluate(val, verbose=0, return_dict=True)["loss"]


def test_fit_learns_the_toy_task(toy) -> None:
    result, ids, feats = toy["result"], toy["ids"], toy["feats"]
    hist = result.history["val_loss"]
    assert hist[0] > 2 * result.best_val_loss, "validation loss should fall clearly"
    assert result.history["val_masked_accuracy"][result.best_epoch - 1] > 0.8
    # the fixture's model holds the weights of its best epoch (validated on all rows)
    val = make_dataset(ids, np.arange(len(ids)), feats, 16, 2, seed=None)
    assert _val_loss(toy["model"], val) == pytest.approx(result.best_val_loss, rel=1e-5)


@pytest.mark.parametrize("patience", [2, 20])
def test_fit_ends_with_the_weights_of_the_best_epoch(patience: int) -> None:
    """The validation captions name the next colour round: once the model learns the training
    mapping, validation loss rises. The model must come back with its best epoch's weights,
    whether early stopping ends the fit (patience 2) or all epochs run (patience 20)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 160
    cls = rng.integers(0, len(COLOURS), n)
    feats = np.eye(8, dtype=np.float32)[cls] + 0.05 * rng.standard_normal((n, 8)).astype(np.float32)
    train_caps = [f"startseq a {COLOURS[c]} thing endseq" for c in cls]
    val_caps = [f"startseq a {COLOURS[(c + 1) % len(COLOURS)]} thing endseq" for c in cls]
    vocab = build_vocabulary(train_caps, 1)
    rows = np.arange(n)
    train = make_dataset(encode_captions(train_caps, vocab, 8), rows, feats, 16, 2, seed=0)
    val = make_dataset(encode_captions(val_caps, vocab, 8), rows, feats, 16, 2, seed=None)
    model = build_merge_model(len(vocab), 8, 16, 32, 0.0)
    compile_model(model, 1e-2)
    epochs = 8
    result = fit(model, train, val, epochs=epochs, patience=patience, verbose=0)
    hist = result.history["val_loss"]
    assert 1 < result.best_epoch < result.epochs_run, hist  # the case this test is about
    assert hist[-1] > 1.2 * result.best_val_loss, hist  # the last epoch is clearly worse
    assert result.epochs_run == (result.best_epoch + patience if patience < epochs else epochs)
    restored = _val_loss(model, val)
    assert restored == pytest.approx(result.best_val_loss, rel=1e-5)
    assert restored == pytest.approx(hist[result.best_epoch - 1], rel=1e-5)
    assert restored != pytest.approx(hist[-1], rel=0.1)
