"""Stage: caption the evaluation split and score it (captioner.evaluation.report): corpus
BLEU-1..4 (nltk, on the cleaned captions), the coco-caption suite (pycocoevalcap on the raw
references: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) and diversity, beside the human ceiling; write
the captions table, the plot data and an offline HTML gallery of the best, worst and sampled
captions by CIDEr-D. Images without features (unreadable, skipped by extract_features) are not
scored, and counted. `evaluate.engine: ray` captions contiguous shards of whole batches in
parallel Ray tasks; every score is still computed here, once, over all the captions."""

import argparse
import sys
import time
from pathlib import Path

from _stage import run_stage

import pandas as pd

from captioner.config.decoding import DecodingConfig
from captioner.config.params import load_params
from captioner.evaluation.cocoeval import CocoScorer
from captioner.evaluation.gallery import bleu_rows, coco_rows, image_paths, write_gallery
from captioner.evaluation.report import evaluate_captions, read_human
from captioner.evaluation.scores import SplitText, scored_features
from captioner.features.store import FeatureFile, report_path
from captioner.runtime.io import atomic_path, write_json


def main() -> None:
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
        from captioner.engines.captioning import decode_captions  # TensorFlow: after the JVM's start

        text = SplitText.read(args.text, p.split)
        human = read_human(args.human, p.split)
        features = FeatureFile.open(args.features)  # only the split's rows are read
        image_ids, feats, missing = scored_features(text.refs, features.ids, features)
        if missing:
            print(f"evaluate: {len(missing)} {p.split} image(s) have no features and are not scored "
                  f"(unreadable, see {report_path(args.features)}), e.g. {missing[:3]}", file=sys.stderr)
        if not image_ids:
            raise ValueError(f"{args.features}: no features for any of the {len(text.refs)} {p.split} images")
        start = time.perf_counter()
        captions = decode_captions(p.engine, args.model, feats, p.threads, p.shards, p.batch_size, DecodingConfig.of(p))
        result = evaluate_captions(text, image_ids, captions, scorer, human, DecodingConfig.of(p), engine=p.engine,
                                   missing=len(missing), decode_seconds=time.perf_counter() - start)
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        result.table.to_parquet(tmp / "captions.parquet", index=False)
        problems = write_gallery(tmp / "gallery.html", result.table,
                                 image_paths(pd.read_parquet(Path(args.text) / "images.parquet")),
                                 p.gallery_size, f"captioner: {p.split} captions", result.summary)
    for problem in problems:
        print(f"evaluate: gallery: {problem}", file=sys.stderr)
    write_json(args.plot, bleu_rows(result.bleu))
    write_json(args.coco_plot, coco_rows(result.coco))
    write_json(args.metrics, result.metrics)
    write_json(args.run_info, result.run_info)
    print(f"{result.line}  | gallery {args.out}/gallery.html")


if __name__ == "__main__":
    run_stage("evaluate", main, (ValueError, OSError, RuntimeError))
