"""Evaluation helpers: references per image, the blind baseline, the results table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from captioner.metrics import corpus_bleu_scores, sentence_bleu4
from captioner.sequences import feature_rows
from captioner.text import unwrap


def references_by_image(captions: pd.DataFrame) -> dict[str, list[list[str]]]:
    """image_id -> its reference captions as token lists (markers removed), in caption order."""
    refs: dict[str, list[list[str]]] = {}
    for row in captions.sort_values(["image_id", "caption_no"]).itertuples(index=False):
        refs.setdefault(str(row.image_id), []).append(unwrap(row.caption.split()))
    return refs


def blind_caption(train_captions: pd.DataFrame) -> list[str]:
    """The image-blind baseline: the most frequent cleaned train caption (ties: shortest, then A-Z)."""
    counts = train_captions["caption"].value_counts()
    top = counts[counts == counts.max()].index
    best = sorted(top, key=lambda c: (len(c.split()), c))[0]
    return unwrap(best.split())


def results_table(
    image_ids: Sequence[str],
    hypotheses: Sequence[Sequence[str]],
    logprobs: Sequence[float],
    refs: dict[str, list[list[str]]],
) -> pd.DataFrame:
    """One row per image: generated caption, its references, score and sentence BLEU-4."""
    return pd.DataFrame(
        {
            "image_id": list(image_ids),
            "caption": [" ".join(h) for h in hypotheses],
            "logprob": list(logprobs),
            "references": [[" ".join(r) for r in refs[i]] for i in image_ids],
            "bleu4": [sentence_bleu4(refs[i], h) for i, h in zip(image_ids, hypotheses)],
        }
    )


def score(refs: dict[str, list[list[str]]], image_ids: Sequence[str], hyps: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 of the hypotheses for `image_ids`."""
    return corpus_bleu_scores([refs[i] for i in image_ids], hyps)


def scored_features(
    refs: dict[str, list[list[str]]], feat_ids: Sequence[str], features: np.ndarray
) -> tuple[list[str], np.ndarray, list[str]]:
    """(image ids with features, in sorted order; their feature rows; ids without features)."""
    ids = sorted(refs)
    rows, missing = feature_rows(ids, feat_ids)
    return [i for i, r in zip(ids, rows) if r >= 0], features[rows[rows >= 0]], missing
