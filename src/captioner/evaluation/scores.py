"""Evaluation helpers: references per image (cleaned and raw), the blind baseline, the results table."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from captioner.evaluation.cocoeval import CocoScorer, human_ceiling, rounded
from captioner.evaluation.bleu import corpus_bleu_scores, sentence_bleu4
from captioner.datasets.sequences import feature_rows
from captioner.datasets.text import unwrap

__all__ = [
    "Rows", "SplitText", "blind_caption", "coco_summary", "raw_references_by_image",
    "references_by_image", "results_table", "score", "scored_features", "split_human_ceiling",
    "train_caption_set",
]


class Rows(Protocol):
    """What reads feature rows on demand (captioner.features.store.FeatureFile)."""

    def gather(self, rows: np.ndarray) -> np.ndarray: ...


def references_by_image(captions: pd.DataFrame) -> dict[str, list[list[str]]]:
    """image_id -> its reference captions as token lists (markers removed), in caption order."""
    refs: dict[str, list[list[str]]] = {}
    for row in captions.sort_values(["image_id", "caption_no"]).itertuples(index=False):
        refs.setdefault(str(row.image_id), []).append(unwrap(row.caption.split()))
    return refs


def raw_references_by_image(captions: pd.DataFrame) -> dict[str, list[str]]:
    """image_id -> its reference captions as the data set wrote them (the ``raw_caption`` column
    of a split table), in caption order: the input of the coco-caption metrics."""
    if "raw_caption" not in captions.columns:
        raise ValueError(
            "the split table has no raw_caption column (written by an older clean_text): "
            "rerun `dvc repro clean_text`"
        )
    refs: dict[str, list[str]] = {}
    for row in captions.sort_values(["image_id", "caption_no"]).itertuples(index=False):
        refs.setdefault(str(row.image_id), []).append(str(row.raw_caption))
    return refs


def train_caption_set(train_captions: pd.DataFrame) -> set[str]:
    """The cleaned train captions (markers removed, words joined by spaces), for novelty."""
    return {" ".join(unwrap(c.split())) for c in train_captions["caption"]}


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
    per_image: Mapping[str, Sequence[float]] | None = None,
) -> pd.DataFrame:
    """One row per image: generated caption, its references, score and sentence BLEU-4, plus a
    column per entry of `per_image` (e.g. the coco suite's per-image ``cider``), in image order."""
    extra = {name: [float(x) for x in values] for name, values in (per_image or {}).items()}
    for name, values in extra.items():
        if len(values) != len(image_ids):
            raise ValueError(f"per-image {name}: {len(values)} values for {len(image_ids)} images")
    return pd.DataFrame(
        {
            "image_id": list(image_ids),
            "caption": [" ".join(h) for h in hypotheses],
            "logprob": list(logprobs),
            "references": [[" ".join(r) for r in refs[i]] for i in image_ids],
            "bleu4": [sentence_bleu4(refs[i], h) for i, h in zip(image_ids, hypotheses)],
            **extra,
        }
    )


def score(refs: dict[str, list[list[str]]], image_ids: Sequence[str], hyps: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 of the hypotheses for `image_ids`."""
    return corpus_bleu_scores([refs[i] for i in image_ids], hyps)


def scored_features(
    refs: dict[str, list[list[str]]], feat_ids: Sequence[str], features: np.ndarray | Rows
) -> tuple[list[str], np.ndarray, list[str]]:
    """(image ids with features, in sorted order; their feature rows; ids without features).
    From a `captioner.features.store.FeatureFile`, only the row groups holding them are read."""
    ids = sorted(refs)
    rows, missing = feature_rows(ids, feat_ids)
    keep = rows[rows >= 0]
    feats = features[keep] if isinstance(features, np.ndarray) else features.gather(keep)
    return [i for i, r in zip(ids, rows) if r >= 0], feats, missing


def split_human_ceiling(split_table: pd.DataFrame, train_table: pd.DataFrame, scorer: CocoScorer) -> dict[str, Any]:
    """The human ceiling (:func:`captioner.evaluation.cocoeval.human_ceiling`) of one split's text table,
    rounded for a metrics file; novelty is measured against `train_table`'s captions."""
    result = human_ceiling(scorer, raw_references_by_image(split_table), references_by_image(split_table),
                           train_caption_set(train_table))
    return rounded(result)


def coco_summary(bleu4: float, coco: Mapping[str, float]) -> str:
    """`BLEU4 x (coco y)  METEOR ...  ROUGE-L ...  CIDEr-D ...` for log lines."""
    return (f"BLEU4 {bleu4:.3f} (coco {coco['bleu4']:.3f})  METEOR {coco['meteor']:.3f}  "
            f"ROUGE-L {coco['rouge_l']:.3f}  CIDEr-D {coco['cider']:.3f}")


@dataclass(frozen=True)
class SplitText:
    """The clean_text tables of the evaluated split and of train (novelty, the blind caption)."""

    split: str
    table: pd.DataFrame
    train: pd.DataFrame

    @classmethod
    def read(cls, text_dir: str | os.PathLike[str], split: str) -> SplitText:
        path = Path(text_dir) / f"{split}.parquet"
        if not path.exists():
            raise ValueError(f"evaluate.split: the data set has no '{split}' split ({path} missing)")
        return cls(split, pd.read_parquet(path), pd.read_parquet(Path(text_dir) / "train.parquet"))

    @functools.cached_property
    def refs(self) -> dict[str, list[list[str]]]:
        return references_by_image(self.table)

    @functools.cached_property
    def raw_refs(self) -> dict[str, list[str]]:
        return raw_references_by_image(self.table)

