"""Stage: caption the evaluation split and score it: corpus BLEU-1..4 (nltk, on the cleaned
captions), the coco-caption suite (pycocoevalcap on the raw references: BLEU-1..4, METEOR,
ROUGE-L, CIDEr-D) and diversity, beside the human ceiling; write the captions table, the plot
data and an offline HTML gallery of the best, worst and sampled captions by CIDEr-D.
Images without features (unreadable, skipped by extract_features) are not scored, and counted.
`--metrics` holds scores only (what `dvc metrics diff` compares); the split, image counts,
decoding settings, timings and the blind caption go to `--run-info`, which is not a DVC metric.
`evaluate.engine: ray` captions contiguous shards of whole batches in parallel Ray tasks
(captioner.engines); every score is still computed here, once, over all the captions."""

import argparse
import sys
import time
from pathlib import Path

try:  # first: a Python without the project's packages stops here, in one line; TensorFlow quiet
    from captioner.console import setup_stage_output
except ModuleNotFoundError as e:
    sys.exit(f"{sys.argv[0]}: {sys.executable} has no '{e.name}': activate the project's venv "
             "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")
setup_stage_output()

import pandas as pd

from captioner.cocoeval import COCO_NAMES, CocoScorer, coco_scores, diversity, java_bin_dir, java_command, rounded
from captioner.evaluation import (
    blind_caption,
    coco_summary,
    raw_references_by_image,
    references_by_image,
    results_table,
    score,
    scored_features,
    split_human_ceiling,
    train_caption_set,
)
from captioner.feature_file import FeatureFile
from captioner.features import report_path
from captioner.gallery import bleu_rows, coco_rows, image_paths, write_gallery
from captioner.io import atomic_path, exit_on_sigterm, read_json, reported_errors, write_json
from captioner.params import EvaluateParams, load_params

HUMAN_RUN_INFO = ("split", "rounds", "images", "references_per_round")  # counts, not scores: run info


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--features", required=True)
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--model", default="data/model")
    ap.add_argument("--out", default="data/eval")
    ap.add_argument("--metrics", default="metrics/eval.json")
    ap.add_argument("--run-info", default="metrics/eval_run.json", help="split, counts, decoding, timings")
    ap.add_argument("--plot", default="metrics/bleu.json", help="BLEU-1..4 rows for `dvc plots`")
    ap.add_argument("--coco-plot", default="metrics/coco.json", help="CIDEr-D and METEOR rows for `dvc plots`")
    ap.add_argument("--human", help="the human_ceiling stage's JSON for this split (default: compute it here)")
    args = ap.parse_args()
    p = load_params().evaluate
    # The METEOR JVM loads its paraphrase table (~15 s) while TensorFlow loads and the model decodes.
    with CocoScorer() as scorer:
        evaluate(args, p, scorer)


def evaluate(args: argparse.Namespace, p: EvaluateParams, scorer: CocoScorer) -> None:
    from captioner.engines.captioning import decode_captions  # TensorFlow: after the JVM's start

    split_file = Path(args.text) / f"{p.split}.parquet"
    if not split_file.exists():
        raise SystemExit(f"evaluate.split: the data set has no '{p.split}' split ({split_file} missing)")
    split_table = pd.read_parquet(split_file)
    refs = references_by_image(split_table)
    raw_refs = raw_references_by_image(split_table)
    human = read_json(args.human) if args.human else None
    if human is not None and human.get("split") != p.split:
        raise ValueError(f"{args.human}: the human ceiling of split {human.get('split')!r}, not {p.split!r}")
    features = FeatureFile.open(args.features)  # only the split's rows are read
    image_ids, feats, missing = scored_features(refs, features.ids, features)
    if missing:
        print(f"evaluate: {len(missing)} {p.split} image(s) have no features and are not scored "
              f"(unreadable, see {report_path(args.features)}), e.g. {missing[:3]}", file=sys.stderr)
    if not image_ids:
        raise SystemExit(f"evaluate: {args.features}: no features for any of the {len(refs)} {p.split} images")

    start = time.perf_counter()
    captions = decode_captions(
        p.engine, args.model, feats, p.threads, p.shards, p.batch_size,
        {"beam_width": p.beam_width, "max_length": p.max_length, "length_penalty": p.length_penalty,
         "block_repeat_ngram": p.block_repeat_ngram},
    )
    seconds = time.perf_counter() - start
    hyps = [c.words for c in captions]
    bleu = score(refs, image_ids, hyps)
    train_table = pd.read_parquet(Path(args.text) / "train.parquet")
    blind = blind_caption(train_table)
    blind_bleu = score(refs, image_ids, [blind] * len(image_ids))

    start = time.perf_counter()
    coco = coco_scores(scorer, {i: raw_refs[i] for i in image_ids}, {  # one METEOR JVM for all
        "model": {i: " ".join(h) for i, h in zip(image_ids, hyps)},
        "blind": dict.fromkeys(image_ids, " ".join(blind)),
    })
    if human is None:
        human = {"split": p.split, **split_human_ceiling(split_table, train_table, scorer)}
    coco_seconds = time.perf_counter() - start  # the wait for the JVM hidden behind decoding is not counted
    java = "" if java_bin_dir() is None else f" (java: {java_command()})"
    model_coco = coco["model"]
    div = rounded(diversity(hyps, train_caption_set(train_table), [refs[i] for i in image_ids]))

    table = results_table(image_ids, hyps, [c.logprob for c in captions], refs,
                          {k: model_coco.per_image[k] for k in ("cider", "meteor")})
    summary = {"split": p.split, "images": len(image_ids), "beam width": p.beam_width,
               **{k.upper(): f"{v:.3f}" for k, v in bleu.items()},
               **{f"coco {COCO_NAMES[k]}": f"{model_coco.corpus[k]:.3f}" for k in ("bleu4", "meteor", "rouge_l", "cider")},
               "human CIDEr-D (4 refs)": f"{human['coco']['cider']:.3f}",
               "distinct": f"{div['distinct']:.2f}", "novel": f"{div['novel']:.2f}",
               "blind BLEU4": f"{blind_bleu['bleu4']:.3f}"}
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        table.to_parquet(tmp / "captions.parquet", index=False)
        problems = write_gallery(
            tmp / "gallery.html", table, image_paths(pd.read_parquet(Path(args.text) / "images.parquet")),
            p.gallery_size, f"captioner: {p.split} captions", summary,
        )
    for problem in problems:
        print(f"evaluate: gallery: {problem}", file=sys.stderr)
    write_json(args.plot, bleu_rows(bleu))
    write_json(args.coco_plot, coco_rows(model_coco.corpus))
    write_json(args.metrics, {
        **{k: round(v, 4) for k, v in bleu.items()},
        "coco": model_coco.rounded(),
        "human": {k: v for k, v in human.items() if k not in HUMAN_RUN_INFO},
        "diversity": div,
        "blind_baseline": {**{k: round(v, 4) for k, v in blind_bleu.items()}, "coco": coco["blind"].rounded()},
    })
    write_json(args.run_info, {
        "split": p.split, "images": len(image_ids), "images_without_features": len(missing),
        "decoding": {"beam_width": p.beam_width, "length_penalty": p.length_penalty,
                     "block_repeat_ngram": p.block_repeat_ngram, "max_length": p.max_length},
        "engine": p.engine, "decode_seconds": round(seconds, 2), "coco_seconds": round(coco_seconds, 2),
        "blind_caption": " ".join(blind),
        "human": {k: v for k, v in human.items() if k in HUMAN_RUN_INFO},
    })
    c = model_coco.corpus
    print(f"evaluate ({p.split}, {len(image_ids)} images, beam {p.beam_width}): "
          + "  ".join(f"{k.upper()} {v:.3f}" for k, v in bleu.items())
          + f"  | coco BLEU4 {c['bleu4']:.3f}  METEOR {c['meteor']:.3f}  ROUGE-L {c['rouge_l']:.3f}  CIDEr-D {c['cider']:.3f}"
          + f"  | human, {human['references_per_round']} refs: " + coco_summary(human["bleu4"], human["coco"])
          + f"  | distinct {div['distinct']:.2f}  novel {div['novel']:.2f}  vocab {div['vocab']}"
          + f"  length {div['mean_length']:.1f} (refs {div['ref_mean_length']:.1f})"
          + f"  | blind baseline BLEU4 {blind_bleu['bleu4']:.3f}"
          + f"  | coco {coco_seconds:.1f} s{java}  | gallery {args.out}/gallery.html")


if __name__ == "__main__":
    with reported_errors("evaluate", (ValueError, OSError, RuntimeError)):
        main()
