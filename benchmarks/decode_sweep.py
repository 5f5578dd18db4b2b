"""Decoding sweep: dev BLEU-1..4 of one trained model folder under several decoding settings.

Loads the model (or ensemble) once and decodes the split with every combination of beam
width, length penalty and n-gram blocking given, printing one row each with corpus BLEU,
the mean caption length and the decoding time. This is the evaluate stage's decoding and
scoring (captioner.decoding.search, captioner.evaluation.scores) without the DVC bookkeeping, for choosing
the evaluate params; record the chosen setting with `dvc exp run -S evaluate...`.

    python benchmarks/decode_sweep.py --project . --beams 1 3 5 --penalties 0 1 2 --blocks 0 2

With --reranks beam consensus (and --consensus-weights uniform probability), every setting is
also decoded with consensus reranking of the beam's candidates (captioner.decoding.consensus),
scored with the model folder's ngrams.npz (or, for an older folder, the project's train captions).

With --coco, every row also gets the coco-caption suite (pycocoevalcap's BLEU-4, METEOR, ROUGE-L
and CIDEr-D on the raw references, as `evaluate` computes them; all rows tokenised in one run)
and the diversity figures (distinct, novel, vocabulary, share ending in a function word).

With --extra-model DIR ..., more model folders join the ensemble. They read the main model's
features (merge models average a region grid over its regions) unless --extra-features gives one
feature file per extra folder: then each member reads its own file, matched by image id, which is
how an ensemble mixes backbones (EfficientNet-Lite0 + Lite1 + Lite2):

    python benchmarks/decode_sweep.py --model data/model --extra-model ../lite1/data/model \
        --extra-features ../lite1/data/features/efficientnet_lite1.parquet --beams 5 --coco

With --subsets K ..., it instead decodes (first setting only) every K-member sub-ensemble of all the
models given, and prints BLEU mean / min / max per K: how much each extra member is worth, and how
much the choice of seeds alone moves BLEU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=".", help="a project folder after `dvc repro` (default: .)")
    ap.add_argument("--features", help="feature file (default: data/features/<backbone>.parquet)")
    ap.add_argument("--model", default="data/model")
    ap.add_argument("--extra-model", nargs="*", default=[],
                    help="more model folders whose members join the ensemble (e.g. pooled merge models "
                    "with an attention model: they see the grid's average over regions)")
    ap.add_argument("--extra-features", nargs="*", default=[],
                    help="one feature file per --extra-model, for members that read other features than "
                    "the main model's (another backbone): each member then reads its own file")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--penalties", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--reranks", nargs="+", default=["beam"], choices=["beam", "consensus"],
                    help="how the caption is chosen among the beam's candidates (consensus: minimum Bayes risk)")
    ap.add_argument("--consensus-weights", nargs="+", default=["uniform"], choices=["uniform", "probability"])
    ap.add_argument("--max-length", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--subsets", type=int, nargs="*", default=[],
                    help="decode every sub-ensemble of these sizes (first beam/penalty/block only)")
    ap.add_argument("--coco", action="store_true", help="add the coco suite and diversity to every row")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)

    from captioner.config.decoding import DecodingConfig, DecodingError

    try:  # every setting checked before anything is loaded
        configs = [DecodingConfig().overridden(beam_width=beam, length_penalty=lp, block_repeat_ngram=block,
                                               max_length=args.max_length, rerank=rerank, consensus_weights=weights)
                   for beam, lp, block, rerank, weights in itertools.product(
                       args.beams, args.penalties, args.blocks, args.reranks, args.consensus_weights)
                   if rerank == "consensus" or weights == args.consensus_weights[0]]
    except DecodingError as e:
        ap.error(str(e))

    import numpy as np
    import pandas as pd

    from captioner.decoding.search import generate_captions
    from captioner.evaluation.scores import references_by_image, score, scored_features
    from captioner.features.store import read_features
    from captioner.model.folder import ModelFolder
    from captioner.model.step import StepDecoder

    project = Path(args.project)
    model_dir = project / args.model
    folder = ModelFolder.open(model_dir)
    features_path = Path(args.features or project / f"data/features/{folder.backbone}.parquet")
    refs = references_by_image(pd.read_parquet(project / f"data/text/{args.split}.parquet"))
    feat_ids, features, _ = read_features(features_path)
    image_ids, feats, _ = scored_features(refs, feat_ids, features)
    vocab = folder.vocabulary()
    models = folder.load_models(features.shape[1], len(vocab))
    if args.extra_features and len(args.extra_features) != len(args.extra_model):
        ap.error(f"--extra-features: one file per --extra-model ({len(args.extra_model)}), "
                 f"got {len(args.extra_features)}")
    views = [(0, feats.shape[1])] * len(models)
    blocks = [feats]
    for k, extra in enumerate(args.extra_model):
        extra_folder = ModelFolder.open(extra)
        if extra_folder.vocabulary().tokens != vocab.tokens:
            ap.error(f"--extra-model {extra}: its vocabulary differs from {model_dir}'s")
        extra_models = extra_folder.load_models(None, len(vocab))
        if args.extra_features:
            ids_k, feats_k, _ = scored_features(refs, *read_features(args.extra_features[k])[:2])
            if list(ids_k) != list(image_ids):
                ap.error(f"--extra-features {args.extra_features[k]}: not the same {args.split} images")
            start = sum(b.shape[1] for b in blocks)
            views += [(start, start + feats_k.shape[1])] * len(extra_models)
            blocks.append(feats_k)
        models += extra_models
    if args.extra_features:
        feats = np.hstack([b.astype(np.float32) for b in blocks])
    else:
        views = None
    if any(not 1 <= k <= len(models) for k in args.subsets):
        ap.error(f"--subsets: sizes must be 1..{len(models)} (the models given), got {args.subsets}")
    print(f"decode_sweep: {model_dir} + {args.extra_model} ({len(models)} model(s)) on {len(image_ids)} "
          f"{args.split} images, features {features_path}")
    if args.subsets:
        return _subsets(args, configs[0], models, feats, vocab, refs, image_ids, views)
    ngrams = None
    if any(c.rerank == "consensus" for c in configs):
        from captioner.datasets.text import read_references
        from captioner.decoding.cider import CiderD
        from captioner.decoding.search import load_ngrams
        from captioner.model.folder import NGRAMS_FILE

        if (model_dir / NGRAMS_FILE).is_file():
            ngrams = load_ngrams(folder)
        else:  # a model folder from before the scst stage wrote them: the same frequencies, from the text
            print(f"decode_sweep: {model_dir / NGRAMS_FILE} missing; n-gram frequencies from data/text/train.parquet")
            ngrams = CiderD(list(read_references(project / "data/text", "train").values()))
    decoder = StepDecoder(models, views)
    print(f"{'beam':>4} {'lp':>4} {'block':>5} {'rerank':>21}  BLEU-1 BLEU-2 BLEU-3 BLEU-4  words  seconds")
    out, hyps = [], []
    for config in configs:
        beam, lp, block = config.beam_width, config.length_penalty, config.block_repeat_ngram
        rerank = config.rerank if config.rerank == "beam" else f"consensus/{config.consensus_weights}"
        start = time.perf_counter()
        caps = generate_captions(decoder, feats, vocab, config, args.batch_size, progress=False, ngrams=ngrams)
        seconds = time.perf_counter() - start
        bleu = score(refs, image_ids, [c.words for c in caps])
        words = float(np.mean([len(c.words) for c in caps]))
        out.append({"beam": beam, "length_penalty": lp, "block_repeat_ngram": block, "rerank": rerank, **bleu,
                    "mean_words": round(words, 2), "seconds": round(seconds, 1),
                    "ms_per_image": round(1000 * seconds / len(caps), 2)})
        hyps.append([c.words for c in caps])
        print(f"{beam:>4} {lp:>4} {block:>5} {rerank:>21}  " + " ".join(f"{bleu[k]:6.3f}" for k in sorted(bleu))
              + f"  {words:5.2f}  {seconds:7.1f}", flush=True)
    if args.coco:
        add_coco(args, project, out, hyps, image_ids, refs)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _subsets(args, config, models, feats, vocab, refs, image_ids, views) -> list[dict]:
    """BLEU of every sub-ensemble of each size in args.subsets, decoded with `config` (the first
    setting), then mean / min / max per size."""
    import numpy as np

    from captioner.decoding.search import generate_captions
    from captioner.evaluation.scores import score
    from captioner.model.step import StepDecoder

    beam, lp, block = config.beam_width, config.length_penalty, config.block_repeat_ngram
    print(f"sub-ensembles of {args.subsets} of the {len(models)} models, beam {beam}, lp {lp}, block {block}")
    print(f"{'size':>4} {'members':<16} BLEU-1 BLEU-2 BLEU-3 BLEU-4")
    out, hyps = [], []
    for k in args.subsets:
        rows = []
        for members in itertools.combinations(range(len(models)), k):
            decoder = StepDecoder([models[i] for i in members], views and [views[i] for i in members])
            caps = generate_captions(decoder, feats, vocab, config, args.batch_size, progress=False)
            bleu = score(refs, image_ids, [c.words for c in caps])
            rows.append({"size": k, "members": list(members), **bleu,
                         "mean_words": round(float(np.mean([len(c.words) for c in caps])), 2)})
            hyps.append([c.words for c in caps])
            print(f"{k:>4} {','.join(map(str, members)):<16} " + " ".join(f"{bleu[b]:6.3f}" for b in sorted(bleu)),
                  flush=True)
        for b in sorted(rows[0]):
            if b.startswith("bleu"):
                v = np.array([r[b] for r in rows])
                print(f"  size {k} {b}: mean {v.mean():.3f}  min {v.min():.3f}  max {v.max():.3f}  ({len(v)} sets)")
        out += rows
    if args.coco:
        add_coco(args, Path(args.project), out, hyps, image_ids, refs)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


def add_coco(args, project: Path, rows: list[dict], hyps: list[list[list[str]]], image_ids: list[str],
             refs: dict[str, list[list[str]]]) -> None:
    """Add coco_* (pycocoevalcap, raw references) and diversity figures to each row, in place."""
    import pandas as pd

    from captioner.evaluation.cocoeval import CocoScorer, coco_scores, diversity
    from captioner.evaluation.scores import raw_references_by_image, train_caption_set

    raw = raw_references_by_image(pd.read_parquet(project / f"data/text/{args.split}.parquet"))
    train = train_caption_set(pd.read_parquet(project / "data/text/train.parquet"))
    with CocoScorer() as scorer:
        scores = coco_scores(scorer, {i: raw[i] for i in image_ids},
                             {str(n): {i: " ".join(h) for i, h in zip(image_ids, hs)} for n, hs in enumerate(hyps)})
    print("coco suite:  row  BLEU-4 METEOR ROUGE-L CIDEr-D  distinct novel vocab  fn-end")
    for n, (row, hs) in enumerate(zip(rows, hyps)):
        corpus = scores[str(n)].corpus
        div = diversity(hs, train, [refs[i] for i in image_ids])
        row.update({f"coco_{k}": round(corpus[k], 4) for k in ("bleu4", "meteor", "rouge_l", "cider")})
        row.update({"distinct": round(div["distinct"], 3), "novel": round(div["novel"], 3), "vocab": div["vocab"],
                    "function_end": round(div["function_end"], 4)})
        print(f"            {n:>4}  {corpus['bleu4']:6.3f} {corpus['meteor']:6.3f} {corpus['rouge_l']:7.3f} "
              f"{corpus['cider']:7.3f}  {div['distinct']:8.2f} {div['novel']:5.2f} {div['vocab']:5d}  "
              f"{div['function_end']:6.3f}", flush=True)


if __name__ == "__main__":
    main()
