"""Captions -> padded integer arrays, and the Keras tutorial's (prefix -> next word) view."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner.runtime.io import atomic_path
from captioner.datasets.text import Vocabulary

__all__ = [
    "drop_without_features", "encode_captions", "feature_rows", "image_rows", "load_sequences",
    "prefix_pairs", "save_sequences",
]


def encode_captions(captions: Sequence[str], vocab: Vocabulary, max_length: int) -> np.ndarray:
    """(N, max_length) int32 ids, zero-padded at the end; longer captions keep their end marker."""
    out = np.zeros((len(captions), max_length), dtype=np.int32)
    for i, caption in enumerate(captions):
        ids = vocab.encode(caption)
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + ids[-1:]
        out[i, : len(ids)] = ids
    return out


def prefix_pairs(tokens: Sequence[str]) -> list[tuple[list[str], str]]:
    """The Keras tutorial's training view: every prefix of a wrapped caption and the word after it.

    >>> prefix_pairs("startseq a cat endseq".split())
    [(['startseq'], 'a'), (['startseq', 'a'], 'cat'), (['startseq', 'a', 'cat'], 'endseq')]
    """
    return [(list(tokens[:i]), tokens[i]) for i in range(1, len(tokens))]


def save_sequences(path: str | Path, ids: np.ndarray, image_ids: Sequence[str]) -> None:
    """Write one split's arrays as an uncompressed .npz (no pickled objects), atomically."""
    names = np.asarray(list(image_ids), dtype=np.str_)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=ids.astype(np.int32), image_ids=names)


def load_sequences(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read (ids, image_ids) written by `save_sequences`; never unpickles."""
    with np.load(path, allow_pickle=False) as data:
        return data["ids"], data["image_ids"]


def feature_rows(image_ids: Sequence[str] | np.ndarray, feature_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Row of each caption's image in the feature matrix, -1 where it has none; and the
    sorted image ids without features (e.g. unreadable images skipped by extract_features)."""
    where = {img: i for i, img in enumerate(feature_ids)}
    rows = np.array([where.get(str(i), -1) for i in image_ids], dtype=np.int64)
    missing = sorted({str(i) for i, r in zip(image_ids, rows) if r < 0})
    return rows, missing


def drop_without_features(
    ids: np.ndarray, image_ids: np.ndarray, feature_ids: Sequence[str], source: str = "features"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Keep the captions whose image has features: (ids, image_ids, feature rows) of those,
    and the image ids dropped. Raises ValueError naming `source` if no caption is left."""
    rows, missing = feature_rows(image_ids, feature_ids)
    keep = rows >= 0
    if len(rows) and not keep.any():
        raise ValueError(
            f"{source}: none of the {len(set(map(str, image_ids)))} captioned images has features, "
            f"e.g. {missing[:5]}; were the features extracted from another data set?"
        )
    return ids[keep], image_ids[keep], rows[keep], missing


def image_rows(image_ids: np.ndarray, feature_ids: Sequence[str], source: str = "features") -> np.ndarray:
    """Row of each caption's image in the feature matrix; KeyError naming missing images."""
    rows, missing = feature_rows(image_ids, feature_ids)
    if missing:
        raise KeyError(
            f"{source}: no features for {len(missing)} image(s) with captions, e.g. {missing[:5]}"
        )
    return rows
