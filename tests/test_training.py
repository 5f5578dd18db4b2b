import numpy as np

from captioner.training import caption_lengths, make_batch, plan_batches


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


def test_fit_learns_and_keeps_the_best_epoch(toy) -> None:
    result = toy["result"]
    hist = result.history["val_loss"]
    assert result.best_val_loss == min(hist) and hist[result.best_epoch - 1] == min(hist)
    assert hist[0] > 2 * result.best_val_loss, "validation loss should fall clearly"
    assert result.history["val_masked_accuracy"][result.best_epoch - 1] > 0.8
