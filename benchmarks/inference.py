"""Figure 4: captioning speed with a loaded model and precomputed image features.

train.ensemble models (the preset's; members with seeds seed, seed + 1, ... as stages/train.py)
are trained briefly on a train slice (speed does not depend on their quality, but caption
length does: the mean number of words generated is reported with every figure), saved as a
model folder and loaded back (`captioner.model.folder`), and decoded with `captioner.decoding.search`
(StepDecoder + beam_search) with the evaluate params (length penalty, n-gram blocking):
  latency      one image at a time (batch 1), greedy and beam 3: ms per image, median over images;
  dev set      the first 1,000 dev images in batches of evaluate.batch_size, beam 3 (and greedy):
               wall seconds, median of repeats.
"single" variants: the first model alone with plain beam search (no length penalty, no
blocking), as `captioner caption` decodes a one-model folder.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser("inference", __doc__)
    ap.add_argument("--train-images", type=int, default=2000, help="train slice for the brief model (quick: 12)")
    ap.add_argument("--epochs", type=int, default=2, help="(quick: 1)")
    ap.add_argument("--latency-images", type=int, default=100, help="dev images timed one by one (quick: 3)")
    ap.add_argument("--eval-images", type=int, default=1000, help="dev images captioned in batches (quick: 8)")
    ap.add_argument("--repeats", type=int, default=3, help="(quick: 1)")
    args = ap.parse_args(argv)
    if args.quick:
        args.train_images, args.epochs, args.latency_images, args.eval_images, args.repeats = 12, 1, 3, 8, 1

    import numpy as np

    from captioner.config.decoding import DecodingConfig
    from captioner.decoding.search import beam_search, generate_captions
    from captioner.model.folder import ModelFolder, model_meta, save_model_folder
    from captioner.model.step import StepDecoder
    from captioner.training.batches import make_dataset
    from captioner.training.ensemble import member_kinds

    params = common.bench_params()
    info = common.machine()
    ep = params.evaluate
    corpus = common.load_corpus(args.data, params)
    train_imgs = corpus.split_images("train", args.train_images)
    dev_imgs = corpus.split_images("dev", max(args.eval_images, args.latency_images))
    feats = common.features_for(corpus, [*train_imgs, *dev_imgs], args.cache, weights=args.weights)
    tr_feats, dev_feats = feats[: len(train_imgs)], feats[len(train_imgs) :]
    ids, img = corpus.encode(train_imgs)
    row_of = {i: r for r, i in enumerate(train_imgs)}
    rows = np.array([row_of[i] for i in img])
    table = common.cache_feature_file(corpus, args.cache, args.weights)
    jobs = common.member_jobs(params, len(corpus.vocab), table)
    n_models = len(jobs)
    print(f"inference: training {n_models} model(s) for {args.epochs} epoch(s) on {len(train_imgs)} train "
          f"images ({len(ids)} captions)")
    trained, train_s = [], 0.0
    for job in jobs:  # as stages/train.py: member i with seed + i
        model = common.compiled_member(job)
        t, _ = common.timed(lambda: model.fit(
            make_dataset(ids, rows, tr_feats, job.batch_size, job.bucket_width, job.seed),
            epochs=args.epochs, shuffle=False, verbose=0))
        train_s += t
        trained.append(model)
    with tempfile.TemporaryDirectory() as tmp:  # saved and loaded back as a model folder
        folder = Path(tmp) / "model"
        save_model_folder(folder, trained, corpus.vocab, model_meta(
            backbone=table.backbone, weights=table.weights, feature_dim=table.dim, vocab_size=len(corpus.vocab),
            member_kinds=member_kinds(params.model, params.train), grid=False, best_epoch=args.epochs,
            best_val_loss=float("nan")))  # trained without validation
        del trained
        load_s, models = common.timed(lambda: ModelFolder.open(folder).load_models(feats.shape[1], len(corpus.vocab)))
    vocab = corpus.vocab
    pipeline = DecodingConfig.of(ep)  # the evaluate stage's settings (beam width set per figure)
    single = DecodingConfig(max_length=ep.max_length)  # one model, plain beam search
    configs = {"pipeline": pipeline, "single": single}
    extra = {"block_repeat_ngram": pipeline.block_repeat_ngram} if pipeline.block_repeat_ngram else {}
    decoders = {"pipeline": StepDecoder(models if n_models > 1 else models[0])}
    if n_models > 1 or extra or ep.length_penalty:
        decoders["single"] = StepDecoder(models[0])  # one model, plain beam search: for reference

    def decode(x: np.ndarray, k: int, variant: str = "pipeline"):
        c = configs[variant]
        return beam_search(decoders[variant], x, vocab, k, c.max_length, c.length_penalty, c.block_repeat_ngram)

    first = {f"{v}_beam{k}": round(common.timed(lambda k=k, v=v: decode(dev_feats[:1], k, v))[0], 3)
             for k in (1, 3) for v in decoders}  # traces
    out: dict = {"machine": info, "models": n_models, "model_train_s": round(train_s, 1),
                 "model_load_s": round(load_s, 2), "first_call_s": first, "max_length": ep.max_length,
                 "length_penalty": ep.length_penalty, "decode_extra": extra,
                 "variants": {"pipeline": f"{n_models} model(s), length_penalty {ep.length_penalty}, {extra or 'no extras'}",
                              "single": "1 model, plain beam search (length_penalty 0)"}}
    n_lat = min(args.latency_images, len(dev_feats))
    for (k, name), variant in [(kn, v) for v in decoders for kn in ((1, "greedy"), (3, "beam3"))]:
        per_image, words = [], []
        for _ in range(args.repeats):
            for i in range(n_lat):
                t, caps = common.timed(lambda i=i: decode(dev_feats[i : i + 1], k, variant))
                per_image.append(t * 1e3)
                words.append(len(caps[0].words))
        name = name if variant == "pipeline" else f"{name}_single"
        out[f"latency_{name}"] = {
            "images": n_lat, "repeats": args.repeats, "ms_median": common.rnd(common.median(per_image)),
            "ms_mean": common.rnd(float(np.mean(per_image))), "ms_p90": common.rnd(float(np.percentile(per_image, 90))),
            "mean_words": round(float(np.mean(words)), 2),
            "ms_per_word": common.rnd(float(np.sum(per_image) / max(np.sum(np.add(words, 1)), 1))),
        }
        print(f"  batch 1, {variant}, {name}: {out[f'latency_{name}']['ms_median']} ms/image (median), "
              f"{out[f'latency_{name}']['mean_words']} words on average")

    n_eval = min(args.eval_images, len(dev_feats))
    for k, variant in [(k, v) for v in decoders for k in (3, 1)]:
        runs, words = [], []
        for _ in range(args.repeats):
            config = configs[variant].overridden(beam_width=k)
            t, caps = common.timed(lambda c=config, v=variant: generate_captions(
                decoders[v], dev_feats[:n_eval], vocab, c, ep.batch_size, False))
            runs.append(t)
            words = [len(c.words) for c in caps]
        key = f"dev_beam{k}" if variant == "pipeline" else f"dev_beam{k}_single"
        out[key] = {"images": n_eval, "batch_size": ep.batch_size, "s_median": round(common.median(runs), 2),
                               "runs_s": [round(r, 2) for r in runs], "mean_words": round(float(np.mean(words)), 2),
                               "images_per_s": common.rnd(n_eval / common.median(runs))}
        print(f"  {n_eval} dev images, {variant}, beam {k}, batches of {ep.batch_size}: {common.median(runs):.2f} s")

    summary = {
        "greedy_ms_per_image": out["latency_greedy"]["ms_median"],
        "greedy_mean_words": out["latency_greedy"]["mean_words"],
        "beam3_ms_per_image": out["latency_beam3"]["ms_median"],
        "beam3_mean_words": out["latency_beam3"]["mean_words"],
        "eval_1000_beam3_s": out["dev_beam3"]["s_median"],
        "eval_1000_greedy_s": out["dev_beam1"]["s_median"],
        "eval_images": n_eval,
        "decode_models": n_models,
    }
    if "single" in decoders:
        summary.update(greedy_single_ms_per_image=out["latency_greedy_single"]["ms_median"],
                       beam3_single_ms_per_image=out["latency_beam3_single"]["ms_median"],
                       eval_1000_beam3_single_s=out["dev_beam3_single"]["s_median"])
    common.report("inference (features precomputed, model loaded)", summary)
    part = {"summary": summary, **out}
    common.write_part(args.out, part)
    return part


if __name__ == "__main__":
    main()
