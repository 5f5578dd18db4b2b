"""Features streamed from the Parquet file in windows of row groups (captioner.training.batches) give the
in-memory path's batches: bit for bit with one window, the same captions, bucketing and batch
count with several; `FeatureFile` reads only what is asked."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from captioner.features import store as features_mod
from captioner.features.store import FeatureFile
from captioner.features.store import read_features, write_features
from captioner.training.batches import batch_count, window_groups, windowed_batches
from captioner.training.batches import caption_lengths, make_batch, make_dataset, plan_batches


def _file(tmp_path: Path, monkeypatch, n: int = 50, dim: int = 6, dtype: str = "float16",
          rows_per_group: int = 7) -> tuple[FeatureFile, np.ndarray]:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    monkeypatch.setattr(features_mod, "ROW_GROUP_BYTES", rows_per_group * dim * 4)
    path = tmp_path / "f.parquet"
    write_features(path, [f"img{i:03d}" for i in range(n)], feats, {"backbone": "test"}, dtype=dtype)
    return FeatureFile.open(path), feats.astype(dtype)


def _captions(n_images: int, per_image: int = 3, max_len: int = 12, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_images), per_image)
    ids = np.zeros((len(rows), max_len), np.int32)
    for i, length in enumerate(rng.integers(3, max_len + 1, len(rows))):
        ids[i, :length] = rng.integers(1, 30, length)
    return ids, rows


def test_feature_file_reads_groups_and_gathers_rows(tmp_path, monkeypatch) -> None:
    f, feats = _file(tmp_path, monkeypatch)
    assert f.groups == 8 and len(f) == 50 and f.dtype == np.float16 and f.dim == 6
    np.testing.assert_array_equal(f.read_groups([2]), feats[14:21])
    np.testing.assert_array_equal(f.read_groups([3, 0]), np.concatenate([feats[21:28], feats[0:7]]))
    rows = np.array([49, 0, 13, 13, 30])
    np.testing.assert_array_equal(f.gather(rows), feats[rows])
    np.testing.assert_array_equal(f.read_all(), read_features(f.path)[1])
    assert f.ids == tuple(read_features(f.path)[0])


def test_a_bad_feature_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="bad.parquet: not a readable Parquet feature file"):
        FeatureFile.open(bad)
    with pytest.raises(FileNotFoundError, match="none.parquet: feature file not found"):
        FeatureFile.open(tmp_path / "none.parquet")


def test_window_sizes_follow_the_memory_budget(tmp_path, monkeypatch) -> None:
    f, _ = _file(tmp_path, monkeypatch, n=50, dim=512, rows_per_group=8)  # 8 KiB a group as float16
    assert window_groups(f, 8 / 1024) == 1
    assert window_groups(f, 24 / 1024) == 3
    assert window_groups(f, 1000) >= f.groups  # the whole file: one window


def test_one_window_gives_the_in_memory_batches_bit_for_bit(tmp_path, monkeypatch) -> None:
    f, feats = _file(tmp_path, monkeypatch)
    ids, rows = _captions(len(f))
    lengths = caption_lengths(ids)
    for seed in (None, 7):
        memory = plan_batches(lengths, 8, 4, None if seed is None else np.random.default_rng(seed))
        streamed = list(windowed_batches(f, ids, rows, lengths, 8, 4, f.groups,
                                         None if seed is None else np.random.default_rng(seed)))
        assert len(streamed) == len(memory)
        for plan, (caps, got) in zip(memory, streamed):
            np.testing.assert_array_equal(caps, plan)
            np.testing.assert_array_equal(got, feats[rows[plan]])


@pytest.mark.parametrize("window", [1, 2, 3])
def test_small_windows_keep_every_caption_its_features_and_the_batch_count(tmp_path, monkeypatch, window) -> None:
    f, feats = _file(tmp_path, monkeypatch)
    ids, rows = _captions(len(f))
    lengths = caption_lengths(ids)
    rng = np.random.default_rng(3)
    epochs = [list(windowed_batches(f, ids, rows, lengths, 8, 4, window, rng)) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == batch_count(lengths, 8, 4) == len(plan_batches(lengths, 8, 4, None))
        seen = Counter()
        partial = Counter()
        for caps, got in batches:
            np.testing.assert_array_equal(got, feats[rows[caps]])  # each caption keeps its image
            assert len(set(lengths[caps] // 4)) == 1  # one length bucket per batch
            seen.update(caps.tolist())
            partial[int(lengths[caps[0]] // 4)] += len(caps) < 8
        assert seen == Counter(range(len(ids)))  # every caption once
        assert max(partial.values()) <= 1  # only a bucket's last batch is partial
    assert [c.tolist() for c, _ in epochs[0]] != [c.tolist() for c, _ in epochs[1]]  # reshuffled


def test_the_streamed_dataset_matches_the_in_memory_one(tmp_path, monkeypatch) -> None:
    from captioner.training.batches import make_streamed_dataset

    f, feats = _file(tmp_path, monkeypatch)
    ids, rows = _captions(len(f))
    memory = make_dataset(ids, rows, feats, 8, 4, seed=5)
    streamed = make_streamed_dataset(f, ids, rows, 8, 4, f.groups, seed=5)
    for _ in range(2):  # the second epoch is reshuffled identically too
        want, got = list(memory.as_numpy_iterator()), list(streamed.as_numpy_iterator())
        assert len(got) == len(want)
        for (m_in, m_y), (s_in, s_y) in zip(want, got):
            np.testing.assert_array_equal(m_in[0], s_in[0])
            np.testing.assert_array_equal(m_in[1], s_in[1])
            np.testing.assert_array_equal(m_y, s_y)
    capped = make_streamed_dataset(f, ids, rows, 8, 4, 1, seed=5, max_batches=3)
    assert len(list(capped.as_numpy_iterator())) == 3 == int(capped.cardinality())
    first = make_batch(ids, rows, feats, plan_batches(caption_lengths(ids), 8, 4, None)[0])
    val = next(make_streamed_dataset(f, ids, rows, 8, 4, 2, seed=None).as_numpy_iterator())
    assert val[0][0].dtype == np.float32 and first[0][0].dtype == np.float32
