"""CIDEr-D for many captions at once: the reward of self-critical training (numpy only).

The same numbers as pycocoevalcap's ``Cider`` (which is CIDEr-D: tf-idf n-gram vectors for
n = 1..4, each candidate weight clipped to the reference's, a Gaussian length penalty with
sigma 6, averaged over n-gram orders and references, times 10), computed on integer arrays:

- words get integer ids (from 1; 0 pads) and each n-gram one int64 code, its ids read as
  base-B digits, so n-grams of different orders never share a code;
- each caption's n-gram counts come from one sort of all its (caption, code) pairs;
- a candidate n-gram finds the references of its image that contain it by a binary search
  on (image, n-gram) keys, prepared once per reference set.

Document frequencies (and the log corpus size) come from a corpus fixed at construction:
the train references for self-critical training and consensus reranking (saved beside a
trained model: :meth:`CiderD.save`), or, as pycocoevalcap does, the references of the very
images being scored (:func:`cider_d`). Quirks kept for equality: the length of
a caption is its number of bigrams, and an n-gram missing from the corpus has df 1.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CiderD", "References", "cider_d"]

Tokens = Sequence[str]


def _pad(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int id rows with 0 into (N, T) int64; and their lengths."""
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    out = np.zeros((len(rows), int(lengths.max(initial=0))), np.int64)
    if len(rows):
        out[np.arange(out.shape[1]) < lengths[:, None]] = np.concatenate([np.asarray(r, np.int64) for r in rows])
    return out, lengths


def _bags(ids: np.ndarray, lengths: np.ndarray, k: int, base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of each row's k-grams: (row, code, count), sorted by row then code."""
    n, t = ids.shape
    if t < k:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    width = t - k + 1
    codes = ids[:, :width].copy()
    for j in range(1, k):
        codes = codes * base + ids[:, j : j + width]
    valid = np.arange(width)[None, :] + k <= lengths[:, None]
    rows = np.broadcast_to(np.arange(n)[:, None], codes.shape)[valid]
    codes = codes[valid]
    order = np.lexsort((codes, rows))
    rows, codes = rows[order], codes[order]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (codes[1:] != codes[:-1])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(rows)))
    return rows[starts], codes[starts], counts


@dataclass(frozen=True)
class _Order:
    """One n-gram order of a reference set, sorted by (image, n-gram) key."""

    grams: np.ndarray  # sorted distinct codes of this order over all references
    keys: np.ndarray  # image * len(grams) + index of the code in `grams`, sorted
    ref: np.ndarray  # global reference index of each entry
    weight: np.ndarray  # tf x idf of each entry


@dataclass(frozen=True)
class References:
    """The reference captions of a set of images, as CIDEr-D vectors of one :class:`CiderD`."""

    start: np.ndarray  # (images,) first global reference index of each image
    count: np.ndarray  # (images,) references per image
    image: np.ndarray  # (refs,) image of each reference
    norms: np.ndarray  # (refs, n) vector norm per n-gram order
    lengths: np.ndarray  # (refs,) bigram count
    orders: tuple[_Order, ...]

    def __len__(self) -> int:
        return len(self.start)


class CiderD:
    """CIDEr-D with document frequencies fixed from `corpus`, the reference captions (token
    lists) of each of its images; n-gram orders 1..`n`, length penalty `sigma`.

    Words get ids on first sight (the table grows with every new word scored), so captions
    given as strings and as id arrays (:meth:`word_ids`) can be mixed.
    """

    def __init__(self, corpus: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0) -> None:
        if not corpus:
            raise ValueError("CIDEr-D needs a non-empty reference corpus for its document frequencies")
        self.n, self.sigma = n, sigma
        self.base = int(math.floor(2.0 ** (62.0 / n)))  # base**n < 2**62: codes fit in int64
        self._words: dict[str, int] = {}
        self.log_images = math.log(float(len(corpus)))
        ids, lengths = self._encode([r for refs in corpus for r in refs])
        image = np.repeat(np.arange(len(corpus)), [len(refs) for refs in corpus])
        self._df: list[tuple[np.ndarray, np.ndarray]] = []
        for k in range(1, n + 1):
            rows, codes, _ = _bags(ids, lengths, k, self.base)
            pairs = np.unique(np.stack([image[rows], codes]), axis=1)  # each n-gram once per image
            self._df.append(np.unique(pairs[1], return_counts=True))

    # ------------------------------------------------------------- persistence
    FORMAT = "captioner-cider-df/1"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the document frequencies (and the words they are coded with) to a compressed
        .npz, so that a scorer can be rebuilt without the corpus (:meth:`load`)."""
        words = np.array(sorted(self._words, key=self._words.__getitem__), dtype=str)
        arrays = {f"grams{k}": g for k, (g, _) in enumerate(self._df, 1)}
        arrays.update({f"df{k}": d.astype(np.int32) for k, (_, d) in enumerate(self._df, 1)})
        with open(path, "wb") as f:
            np.savez_compressed(f, format=np.array(self.FORMAT), words=words,
                                sizes=np.array([self.n, self.sigma, self.log_images]), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CiderD:
        """The scorer :meth:`save` wrote; ValueError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != cls.FORMAT:
                    raise ValueError(f"format {str(z['format'])!r}, expected {cls.FORMAT!r}")
                n, sigma, log_images = (float(x) for x in z["sizes"])
                out = cls.__new__(cls)
                out.n, out.sigma, out.log_images = int(n), sigma, log_images
                out.base = int(math.floor(2.0 ** (62.0 / out.n)))
                out._words = {str(w): i for i, w in enumerate(z["words"].tolist(), 1)}
                out._df = [(z[f"grams{k}"].astype(np.int64), z[f"df{k}"].astype(np.int64)) for k in range(1, out.n + 1)]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not CIDEr-D document frequencies ({e})") from None
        return out

    # ------------------------------------------------------------------ words
    def word_ids(self, tokens: Tokens) -> np.ndarray:
        """Ids of `tokens` (new words get new ids): e.g. map a model vocabulary once, then
        score its id arrays with :meth:`score_ids`."""
        words = self._words
        out = np.fromiter((words.setdefault(w, len(words) + 1) for w in tokens), np.int64, len(tokens))
        if len(words) >= self.base:
            raise ValueError(f"CIDEr-D: more than {self.base - 1} distinct words; {self.n}-gram codes would overflow")
        return out

    def _encode(self, captions: Sequence[Tokens]) -> tuple[np.ndarray, np.ndarray]:
        return _pad([self.word_ids(c) for c in captions])

    def _idf(self, k: int, codes: np.ndarray) -> np.ndarray:
        """log(corpus images) - log(max(1, document frequency)) of each k-gram code."""
        grams, df = self._df[k - 1]
        if not len(grams):
            return np.full(len(codes), self.log_images)
        at = np.minimum(np.searchsorted(grams, codes), len(grams) - 1)
        return self.log_images - np.log(np.where(grams[at] == codes, df[at], 1).astype(np.float64))

    # ------------------------------------------------------------- references
    def references(self, refs: Sequence[Sequence[Tokens]]) -> References:
        """Prepare the reference captions of each image (at least one per image) for scoring."""
        count = np.array([len(r) for r in refs], np.int64)
        if (count == 0).any():
            raise ValueError(f"CIDEr-D: image {int(np.argmin(count))} has no reference caption")
        start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        image = np.repeat(np.arange(len(refs)), count)
        ids, lengths = self._encode([r for rs in refs for r in rs])
        norms = np.zeros((len(ids), self.n))
        orders = []
        for k in range(1, self.n + 1):
            rows, codes, tf = _bags(ids, lengths, k, self.base)
            weight = tf * self._idf(k, codes)
            norms[:, k - 1] = np.sqrt(np.bincount(rows, weight**2, minlength=len(ids)))
            grams, gram = np.unique(codes, return_inverse=True)
            keys = image[rows] * max(len(grams), 1) + gram
            order = np.argsort(keys, kind="stable")
            orders.append(_Order(grams, keys[order], rows[order], weight[order]))
        return References(start, count, image, norms, np.maximum(lengths - 1, 0), tuple(orders))

    # ----------------------------------------------------------------- scores
    def score(self, candidates: Sequence[Tokens], images: Sequence[int] | np.ndarray, refs: References) -> np.ndarray:
        """CIDEr-D of each candidate (token list) against the references of its image
        (`images[i]`, an index into `refs`); float64 (N,)."""
        ids, lengths = self._encode(candidates)
        return self.score_ids(ids, lengths, images, refs)

    def score_ids(
        self, ids: np.ndarray, lengths: np.ndarray, images: Sequence[int] | np.ndarray, refs: References
    ) -> np.ndarray:
        """:meth:`score` for candidates given as word ids of this scorer: row i's first
        `lengths[i]` entries of the (N, T) array `ids` (the rest is ignored)."""
        ids = np.asarray(ids, np.int64)
        lengths = np.minimum(np.asarray(lengths, np.int64), ids.shape[1] if ids.ndim == 2 else 0)
        images = np.asarray(images, np.int64)
        m = len(ids)
        if len(lengths) != m or len(images) != m:
            raise ValueError(f"CIDEr-D: {m} candidates but {len(lengths)} lengths and {len(images)} images")
        if m and (images.min() < 0 or images.max() >= len(refs)):
            raise ValueError(f"CIDEr-D: image index out of range for {len(refs)} reference sets")
        used = ids[np.arange(ids.shape[1] if ids.ndim == 2 else 0)[None, :] < lengths[:, None]]
        if len(used) and (used.min() < 1 or used.max() > len(self._words)):
            raise ValueError("CIDEr-D: word id unknown to this scorer (map words with word_ids; 0 is padding)")
        per_image = refs.count[images]
        pair_start = np.concatenate([[0], np.cumsum(per_image)[:-1]]).astype(np.int64)
        pairs = int(per_image.sum())
        pair_cand = np.repeat(np.arange(m), per_image)
        pair_ref = refs.start[images][pair_cand] + np.arange(pairs) - pair_start[pair_cand]
        delta = np.maximum(lengths - 1, 0)[pair_cand] - refs.lengths[pair_ref]
        penalty = np.exp(-(delta.astype(np.float64) ** 2) / (2 * self.sigma**2))
        total = np.zeros(pairs)
        for k, order in enumerate(refs.orders, start=1):
            rows, codes, tf = _bags(ids, lengths, k, self.base)
            weight = tf * self._idf(k, codes)
            norm = np.sqrt(np.bincount(rows, weight**2, minlength=m))
            val = np.zeros(pairs)
            if len(order.grams) and len(rows):
                at = np.minimum(np.searchsorted(order.grams, codes), len(order.grams) - 1)
                known = order.grams[at] == codes
                rows, weight, keys = rows[known], weight[known], images[rows[known]] * len(order.grams) + at[known]
                lo, hi = np.searchsorted(order.keys, keys, "left"), np.searchsorted(order.keys, keys, "right")
                hits = hi - lo
                which = np.repeat(np.arange(len(keys)), hits)
                entry = lo[which] + np.arange(int(hits.sum())) - np.repeat(np.cumsum(hits) - hits, hits)
                ref_w = order.weight[entry]
                ref = order.ref[entry]
                pair = pair_start[rows[which]] + ref - refs.start[refs.image[ref]]
                val = np.bincount(pair, np.minimum(weight[which], ref_w) * ref_w, minlength=pairs)
            denom = norm[pair_cand] * refs.norms[pair_ref, k - 1]
            val = np.where(denom != 0, val / np.where(denom != 0, denom, 1.0), val)
            total += val * penalty
        per_cand = np.bincount(pair_cand, total, minlength=m)
        return per_cand / self.n / np.maximum(per_image, 1) * 10.0


def cider_d(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str], n: int = 4, sigma: float = 6.0
) -> tuple[float, np.ndarray]:
    """pycocoevalcap's ``Cider().compute_score``: space-separated (tokenised) captions, one
    candidate per image, document frequencies from these images' references. Returns the
    mean and the per-image scores in the order of `candidates`."""
    if set(references) != set(candidates):
        raise ValueError("references and candidates must cover the same images")
    keys = list(candidates)
    refs = [[r.split() for r in references[k]] for k in keys]
    scorer = CiderD(refs, n, sigma)
    scores = scorer.score([candidates[k].split() for k in keys], np.arange(len(keys)), scorer.references(refs))
    return float(scores.mean()), scores
