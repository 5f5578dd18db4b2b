"""Consensus (minimum-Bayes-risk) reranking of a beam's final candidates.

Beam search ends with `beam_width` candidates per image. Plain decoding keeps the most likely
one; consensus keeps the one the others agree with most: the candidate c_i with the highest
expected utility

    E_i = sum_{j != i} w_j CIDEr-D(c_i | c_j) / sum_{j != i} w_j

where CIDEr-D(c_i | c_j) scores c_i with c_j as its only reference, with document frequencies
from the train captions (:class:`captioner.decoding.cider.CiderD`, saved beside the model), and
w_j is 1 ("uniform") or the candidate's probability under the model, a softmax of its
length-penalised log-probability over the image's candidates ("probability"). Candidates the
search could not fill (score -inf) take no part. One image's choice never depends on the
other images of its batch, so the CLI, the service and the pipeline agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from captioner.decoding.cider import CiderD

__all__ = ["Consensus", "expected_utility"]


def expected_utility(utility: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, k) expected utility of each candidate from (n, k, k) utilities u[x, i, j] (candidate
    i against candidate j as reference) and (n, k) non-negative weights of the candidates as
    references; the diagonal is left out, and a candidate with no weighted other gets -inf."""
    k = utility.shape[-1]
    w = np.broadcast_to(weights[:, None, :], utility.shape) * (1.0 - np.eye(k))[None]
    total = w.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w * utility).sum(axis=2) / total, -np.inf)


@dataclass(frozen=True)
class Consensus:
    """Chooses each image's caption among its beam candidates by expected CIDEr-D (module docstring)."""

    scorer: CiderD
    weights: Literal["uniform", "probability"] = "uniform"

    def choose(self, candidates: Sequence[Sequence[Sequence[str]]], scores: np.ndarray) -> np.ndarray:
        """Index of the chosen candidate of each image: `candidates[x][i]` is image x's i-th
        candidate (words), `scores[x, i]` its (length-penalised) log-probability, -inf when the
        search left it empty. Ties go to the lower index (the more likely beam)."""
        scores = np.asarray(scores, np.float64)
        n, k = scores.shape
        valid = np.isfinite(scores)
        flat = [list(candidates[x][i]) if valid[x, i] else [] for x in range(n) for i in range(k)]
        refs = self.scorer.references([[c] for c in flat])  # each candidate its own reference set
        cand = np.repeat(np.arange(n * k), k)  # candidate (x, i) against every (x, j)
        ref = (np.repeat(np.arange(n), k * k) * k) + np.tile(np.arange(k), n * k)
        utility = self.scorer.score([flat[c] for c in cand], ref, refs).reshape(n, k, k)
        if self.weights == "probability":
            z = np.where(valid, scores - np.max(np.where(valid, scores, -np.inf), axis=1, keepdims=True), -np.inf)
            w = np.exp(z)
        else:
            w = valid.astype(np.float64)
        expected = np.where(valid, expected_utility(utility, w), -np.inf)
        best = expected.argmax(axis=1)
        lone = ~np.isfinite(expected).any(axis=1)  # one candidate (or none): keep the most likely
        best[lone] = np.argmax(np.where(valid, scores, -np.inf), axis=1)[lone]
        return best
