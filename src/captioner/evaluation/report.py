"""The `evaluate` stage's scoring, as one function over the captions of a split: corpus BLEU-1..4
(nltk, on the cleaned captions), the coco-caption suite (pycocoevalcap on the raw references),
diversity, the blind baseline and the human ceiling; the per-image table behind the gallery;
and the two records the stage writes, the metrics (scores only: what `dvc metrics diff`
compares) and the run info (split, counts, decoding, timings: not a DVC metric)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from captioner.config.decoding import DecodingConfig
from captioner.evaluation.cocoeval import COCO_NAMES, CocoScorer, coco_scores, diversity, java_bin_dir, java_command, rounded
from captioner.evaluation.scores import (
    SplitText,
    blind_caption,
    coco_summary,
    results_table,
    score,
    split_human_ceiling,
    train_caption_set,
)
from captioner.runtime.io import read_json

__all__ = ["HUMAN_RUN_INFO", "Evaluation", "evaluate_captions", "read_human"]

HUMAN_RUN_INFO = ("split", "rounds", "images", "references_per_round")  # counts, not scores: run info


def read_human(path: str | os.PathLike[str] | None, split: str) -> dict | None:
    """The human_ceiling stage's record for `split` (None: none given, evaluate computes it)."""
    if path is None:
        return None
    human = read_json(path)
    if human.get("split") != split:
        raise ValueError(f"{path}: the human ceiling of split {human.get('split')!r}, not {split!r}")
    return human


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` writes: metrics, run info, the per-image table, the gallery's summary."""

    metrics: dict[str, Any]
    run_info: dict[str, Any]
    table: pd.DataFrame
    summary: dict[str, str]
    bleu: dict[str, float]
    coco: dict[str, float]
    line: str


def evaluate_captions(text: SplitText, image_ids: Sequence[str], captions: Sequence[Any], scorer: CocoScorer,
                      human: dict | None, decoding: DecodingConfig, *, engine: str, missing: int,
                      decode_seconds: float) -> Evaluation:
    """Score `captions` (captioner.decoding.search.Caption, one per image id) against the split's
    references, beside the blind baseline and the human ceiling (computed here when `human` is None)."""
    refs, hyps = text.refs, [c.words for c in captions]
    bleu = score(refs, image_ids, hyps)
    blind = blind_caption(text.train)
    blind_bleu = score(refs, image_ids, [blind] * len(image_ids))

    start = time.perf_counter()
    coco = coco_scores(scorer, {i: text.raw_refs[i] for i in image_ids}, {  # one METEOR JVM for all
        "model": {i: " ".join(h) for i, h in zip(image_ids, hyps)},
        "blind": dict.fromkeys(image_ids, " ".join(blind)),
    })
    if human is None:
        human = {"split": text.split, **split_human_ceiling(text.table, text.train, scorer)}
    coco_seconds = time.perf_counter() - start  # the wait for the JVM hidden behind decoding is not counted
    model_coco = coco["model"]
    div = rounded(diversity(hyps, train_caption_set(text.train), [refs[i] for i in image_ids]))
    table = results_table(image_ids, hyps, [c.logprob for c in captions], refs,
                          {k: model_coco.per_image[k] for k in ("cider", "meteor")})
    summary = {"split": text.split, "images": len(image_ids), "beam width": decoding.beam_width,
               **{k.upper(): f"{v:.3f}" for k, v in bleu.items()},
               **{f"coco {COCO_NAMES[k]}": f"{model_coco.corpus[k]:.3f}" for k in ("bleu4", "meteor", "rouge_l", "cider")},
               "human CIDEr-D (4 refs)": f"{human['coco']['cider']:.3f}",
               "distinct": f"{div['distinct']:.2f}", "novel": f"{div['novel']:.2f}",
               "blind BLEU4": f"{blind_bleu['bleu4']:.3f}"}
    metrics = {
        **{k: round(v, 4) for k, v in bleu.items()},
        "coco": model_coco.rounded(),
        "human": {k: v for k, v in human.items() if k not in HUMAN_RUN_INFO},
        "diversity": div,
        "blind_baseline": {**{k: round(v, 4) for k, v in blind_bleu.items()}, "coco": coco["blind"].rounded()},
    }
    run_info = {
        "split": text.split, "images": len(image_ids), "images_without_features": missing,
        "decoding": decoding.as_dict(),
        "engine": engine, "decode_seconds": round(decode_seconds, 2), "coco_seconds": round(coco_seconds, 2),
        "blind_caption": " ".join(blind),
        "human": {k: v for k, v in human.items() if k in HUMAN_RUN_INFO},
    }
    c = model_coco.corpus
    java = "" if java_bin_dir() is None else f" (java: {java_command()})"
    how = f"beam {decoding.beam_width}" + (" + consensus" if decoding.rerank == "consensus" else "")
    line = (f"evaluate ({text.split}, {len(image_ids)} images, {how}): "
            + "  ".join(f"{k.upper()} {v:.3f}" for k, v in bleu.items())
            + f"  | coco BLEU4 {c['bleu4']:.3f}  METEOR {c['meteor']:.3f}  ROUGE-L {c['rouge_l']:.3f}  CIDEr-D {c['cider']:.3f}"
            + f"  | human, {human['references_per_round']} refs: " + coco_summary(human["bleu4"], human["coco"])
            + f"  | distinct {div['distinct']:.2f}  novel {div['novel']:.2f}  vocab {div['vocab']}"
            + f"  length {div['mean_length']:.1f} (refs {div['ref_mean_length']:.1f})  function-word end "
            + f"{div['function_end']:.2f}"
            + f"  | blind baseline BLEU4 {blind_bleu['bleu4']:.3f}  | coco {coco_seconds:.1f} s{java}")
    return Evaluation(metrics, run_info, table, summary, bleu, dict(model_coco.corpus), line)
