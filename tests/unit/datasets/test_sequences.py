import numpy as np
import pytest

from captioner.datasets.sequences import (
    encode_captions, image_rows, load_sequences, prefix_pairs, save_sequences,
)
from captioner.datasets.text import build_vocabulary


def test_prefix_pairs_match_the_seed_table() -> None:
    pairs = prefix_pairs("startseq a cat sits on the table endseq".split())
    assert pairs == [
        (["startseq"], "a"),
        (["startseq", "a"], "cat"),
        (["startseq", "a", "cat"], "sits"),
        (["startseq", "a", "cat", "sits"], "on"),
        (["startseq", "a", "cat", "sits", "on"], "the"),
        (["startseq", "a", "cat", "sits", "on", "the"], "table"),
        (["startseq", "a", "cat", "sits", "on", "the", "table"], "endseq"),
    ]


def test_encode_pads_and_truncates_keeping_the_end_marker() -> None:
    caps = ["startseq a cat endseq", "startseq a cat a cat a cat endseq"]
    vocab = build_vocabulary(caps, 1)
    ids = encode_captions(caps, vocab, max_length=5)
    assert ids.dtype == np.int32 and ids.shape == (2, 5)
    assert vocab.decode(ids[0][:4]) == ["startseq", "a", "cat", "endseq"] and ids[0][4] == 0
    assert vocab.decode(ids[1]) == ["startseq", "a", "cat", "a", "endseq"]


def test_sequences_roundtrip_without_pickle(tmp_path) -> None:
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    save_sequences(tmp_path / "s.npz", ids, ["x", "y", "zz"])
    got_ids, got_imgs = load_sequences(tmp_path / "s.npz")
    np.testing.assert_array_equal(got_ids, ids)
    assert got_imgs.tolist() == ["x", "y", "zz"] and got_imgs.dtype.kind == "U"


def test_image_rows_names_missing_images() -> None:
    np.testing.assert_array_equal(image_rows(np.array(["b", "a", "b"]), ["a", "b"]), [1, 0, 1])
    with pytest.raises(KeyError, match="feats.parquet: no features for 1 image"):
        image_rows(np.array(["a", "c"]), ["a", "b"], "feats.parquet")
