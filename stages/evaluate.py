"""Stage: caption the evaluation split, score corpus BLEU-1..4, write the captions table,
the BLEU plot data and an offline HTML gallery of the best, worst and sampled captions.
Images without features (unreadable, skipped by extract_features) are not scored, and counted."""

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from captioner.decoding import StepDecoder, generate_captions
from captioner.evaluation import blind_caption, references_by_image, results_table, score, scored_features
from captioner.features import read_features, report_path
from captioner.gallery import bleu_rows, image_paths, write_gallery
from captioner.io import atomic_path, exit_on_sigterm, read_json, reported_errors, write_json
from captioner.model import load_members
from captioner.params import load_params
from captioner.text import load_vocabulary


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--features", required=True)
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--model", default="data/model")
    ap.add_argument("--out", default="data/eval")
    ap.add_argument("--metrics", default="metrics/eval.json")
    ap.add_argument("--plot", default="metrics/bleu.json", help="BLEU-1..4 rows for `dvc plots`")
    args = ap.parse_args()
    p = load_params().evaluate

    split_file = Path(args.text) / f"{p.split}.parquet"
    if not split_file.exists():
        raise SystemExit(f"evaluate.split: the data set has no '{p.split}' split ({split_file} missing)")
    refs = references_by_image(pd.read_parquet(split_file))
    feat_ids, features, _ = read_features(args.features)
    image_ids, feats, missing = scored_features(refs, feat_ids, features)
    if missing:
        print(f"evaluate: {len(missing)} {p.split} image(s) have no features and are not scored "
              f"(unreadable, see {report_path(args.features)}), e.g. {missing[:3]}", file=sys.stderr)
    if not image_ids:
        raise SystemExit(f"evaluate: {args.features}: no features for any of the {len(refs)} {p.split} images")

    vocab = load_vocabulary(Path(args.model) / "vocab.json")
    models = load_members(args.model, read_json(Path(args.model) / "meta.json"), features.shape[1], len(vocab))
    start = time.perf_counter()
    captions = generate_captions(
        StepDecoder(models), feats, vocab, p.beam_width, p.max_length, p.length_penalty, p.batch_size,
        block_repeat_ngram=p.block_repeat_ngram,
    )
    seconds = time.perf_counter() - start
    hyps = [c.words for c in captions]
    bleu = score(refs, image_ids, hyps)
    blind = blind_caption(pd.read_parquet(Path(args.text) / "train.parquet"))
    blind_bleu = score(refs, image_ids, [blind] * len(image_ids))

    table = results_table(image_ids, hyps, [c.logprob for c in captions], refs)
    summary = {"split": p.split, "images": len(image_ids), "beam width": p.beam_width,
               **{k.upper(): f"{v:.3f}" for k, v in bleu.items()},
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
    write_json(args.metrics, {
        **{k: round(v, 4) for k, v in bleu.items()},
        "split": p.split, "images": len(image_ids), "images_without_features": len(missing),
        "beam_width": p.beam_width, "decode_seconds": round(seconds, 2),
        "blind_baseline": {**{k: round(v, 4) for k, v in blind_bleu.items()}, "caption": " ".join(blind)},
    })
    print(f"evaluate ({p.split}, {len(image_ids)} images, beam {p.beam_width}): "
          + "  ".join(f"{k.upper()} {v:.3f}" for k, v in bleu.items())
          + f"  | blind baseline BLEU4 {blind_bleu['bleu4']:.3f}  | gallery {args.out}/gallery.html")


if __name__ == "__main__":
    with reported_errors("evaluate"):
        main()
