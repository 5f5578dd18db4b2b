"""Corpus BLEU-1..4 (nltk) and per-image scores."""

from __future__ import annotations

from collections.abc import Sequence

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

__all__ = ["BLEU_WEIGHTS", "corpus_bleu_scores", "sentence_bleu4"]

BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    "bleu1": (1.0,),
    "bleu2": (0.5, 0.5),
    "bleu3": (1 / 3, 1 / 3, 1 / 3),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}

Tokens = Sequence[str]


def corpus_bleu_scores(
    references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]
) -> dict[str, float]:
    """Corpus BLEU-1..4 of hypotheses against their lists of reference token lists."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    refs = [[list(r) for r in rs] for rs in references]
    hyps = [list(h) for h in hypotheses]
    return {name: float(corpus_bleu(refs, hyps, weights=w)) for name, w in BLEU_WEIGHTS.items()}


def sentence_bleu4(references: Sequence[Tokens], hypothesis: Tokens) -> float:
    """Smoothed sentence BLEU-4 of one caption (for ranking examples, not for reporting)."""
    return float(
        sentence_bleu(
            [list(r) for r in references],
            list(hypothesis),
            smoothing_function=SmoothingFunction().method1,
        )
    )
