"""Figure 2: training throughput (predicted words/s) and memory, the project vs the seed.

On the same Flickr8k train slice, in the same process, epochs of ours and the seed interleaved:
  ours         captioner.training.fit: make_dataset (length-bucketed whole captions, features
               gathered per batch) + compile_model + model.fit, batch = train.batch_size captions;
  seed         benchmarks/seed.py: one sample per caption prefix, pre-padded to the longest
               caption of all train captions (what the seed pads to on Flickr8k), a feature
               copy and a one-hot target per sample, categorical
               cross-entropy; batch = the words of one of our batches on average, so both take
               the same number of optimizer steps per epoch (their validation curves are then
               comparable epoch by epoch) and the seed runs at its most efficient batch size;
  seed_b64     the seed with 64 samples per batch (the tutorial's scale), one epoch.
A "word" is one predicted next word: a non-padding target of ours = one sample of the seed's.
Throughput is measured over the training batches only (validation excluded), as the median
over epochs 2.. (epoch 1 includes graph tracing). After every epoch both models are scored on
the same dev slice: mean negative log-likelihood per word, inference mode.

Memory: a child process, started first while this one is still small, trains ours for one
epoch on all train images (the train stage's inputs: the Parquet feature file, all train + dev
captions) and reports its peak RSS: VmHWM of its own address space and
resource.getrusage ru_maxrss (which also counts what it inherits across fork + exec). The seed's materialised arrays for the same data are
estimated from their shapes (float32 features, int32 prefixes, float32 one-hot targets).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def rss_gb() -> float:
    """ru_maxrss in GB (Linux: KiB). Caution: it carries over fork + exec, so in a child it is at
    least the parent's resident size when the child was started."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def hwm_gb() -> float | None:
    """Peak resident size of this process's own address space (VmHWM, reset by exec), in GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def child_rss(args) -> None:
    """Train ours for `--epochs-full` epoch(s) on all train images, as stages/train.py does; print JSON."""
    after_import = hwm_gb()
    from captioner.datasets.sequences import image_rows
    from captioner.features.store import FeatureFile, read_features
    from captioner.training.fit import TrainData, train_member

    params = common.bench_params()
    corpus = common.load_corpus(args.data, params)
    train_imgs = corpus.split_images("train", args.full_images)
    dev_imgs = corpus.split_images("dev", None if args.full_images is None else max(1, args.full_images // 6))
    table = common.feature_table(corpus, [*train_imgs, *dev_imgs], args.cache, args.weights)
    start_rss = hwm_gb()
    feat_ids, features, _ = read_features(table)
    seqs = {s: corpus.encode(imgs) for s, imgs in (("train", train_imgs), ("dev", dev_imgs))}
    rows = {s: image_rows(img, feat_ids) for s, (_, img) in seqs.items()}
    data = TrainData(seqs["train"][0], rows["train"], seqs["dev"][0], rows["dev"], features)
    timer = common.epoch_timer()
    models = []
    for job in common.member_jobs(params, len(corpus.vocab), FeatureFile.open(table), epochs=args.epochs_full):
        model, _ = train_member(job, data, callbacks=[timer], verbose=0)  # one after another, as stages/train.py
        models.append(model)
    words = common.n_words(seqs["train"][0])
    print(json.dumps({
        "train_images": len(train_imgs), "train_captions": len(seqs["train"][0]), "train_words": words,
        "dev_images": len(dev_imgs), "feature_rows": len(feat_ids), "epochs": args.epochs_full,
        "ensemble": len(models), "label_smoothing": params.train.label_smoothing,
        "epoch_s": [round(s, 2) for s in timer.seconds],
        "words_per_s": round(words / common.median(timer.seconds), 1),  # 1 epoch per member
        "hwm_after_import_gb": after_import and round(after_import, 3),
        "hwm_before_data_gb": start_rss and round(start_rss, 3),
        "ru_maxrss_gb": round(rss_gb(), 3), "vm_hwm_gb": (h := hwm_gb()) and round(h, 3),
        # the child's own peak: VmHWM where the kernel has it, else ru_maxrss (an upper bound)
        "peak_rss_gb": round(h if h is not None else rss_gb(), 3),
    }))


def run_child(args, corpus) -> dict:
    """The memory child, started while this process is still small (ru_maxrss carries over
    fork + exec); the feature cache is filled first so that the child only trains."""
    dev_n = None if args.full_images is None else max(1, args.full_images // 6)
    common.feature_table(corpus, [*corpus.split_images("train", args.full_images),
                                  *corpus.split_images("dev", dev_n)], args.cache, args.weights)
    cmd = [common.python(), str(Path(__file__).resolve()), "--child-rss", "--data", args.data,
           "--cache", args.cache, "--weights", args.weights, "--epochs-full", str(args.epochs_full)]
    if args.full_images is not None:
        cmd += ["--full-images", str(args.full_images)]
    t0 = time.perf_counter()
    child = common.run_json(cmd)
    child["wall_s"] = round(time.perf_counter() - t0, 1)
    child["parent_vm_hwm_gb"] = round(hwm_gb() or 0.0, 3)  # this process, while the child ran
    print(f"  all train images: {child['train_images']} images, {child['train_words']} words, "
          f"{child['words_per_s']:.0f} words/s, peak RSS {child['peak_rss_gb']:.2f} GB "
          f"(ru_maxrss {child['ru_maxrss_gb']:.2f} GB)", flush=True)
    return child


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser("train_vs_seed", __doc__)
    ap.add_argument("--train-images", type=int, default=1000, help="train slice (quick: 12)")
    ap.add_argument("--dev-images", type=int, default=100, help="dev slice for the loss curves (quick: 4)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of ours and seed (quick: 2)")
    ap.add_argument("--seed-batch", type=int, default=64, help="the tutorial-scale seed batch (samples)")
    ap.add_argument("--label-smoothing", type=float, default=0.0,
                    help="ours' label smoothing in the comparison (default 0: the seed's objective)")
    ap.add_argument("--no-rss", action="store_true", help="skip the full-data memory child")
    ap.add_argument("--full-images", type=int, default=None, help="(child) train images; default all")
    ap.add_argument("--epochs-full", type=int, default=1, help="(child) epochs on all train images")
    ap.add_argument("--child-rss", action="store_true", help=argparse_hidden())
    args = ap.parse_args(argv)
    if args.quick:
        args.train_images, args.dev_images, args.epochs = 12, 4, 2
        args.full_images = args.full_images or 12
    if args.child_rss:
        child_rss(args)
        return {}

    import numpy as np

    from benchmarks.seed import build_seed_model, seed_bytes, seed_samples, seed_val_nll
    from captioner.training.batches import caption_lengths, make_dataset, plan_batches

    params = common.bench_params()
    tp, mp = params.train, params.model
    corpus = common.load_corpus(args.data, params)
    child = None if args.no_rss else run_child(args, corpus)  # first: this process is still small
    info = common.machine()
    train_imgs = corpus.split_images("train", args.train_images)
    dev_imgs = corpus.split_images("dev", args.dev_images)
    imgs = [*train_imgs, *dev_imgs]
    feats = common.features_for(corpus, imgs, args.cache, weights=args.weights)
    row_of = {img: i for i, img in enumerate(imgs)}
    (tr_ids, tr_img), (dv_ids, dv_img) = corpus.encode(train_imgs), corpus.encode(dev_imgs)
    tr_rows = np.array([row_of[i] for i in tr_img])
    dv_rows = np.array([row_of[i] for i in dv_img])
    words = common.n_words(tr_ids)
    vsize, dim = len(corpus.vocab), feats.shape[1]
    n_batches = len(plan_batches(caption_lengths(tr_ids), tp.batch_size, tp.bucket_width, None))
    matched_batch = max(1, round(words / n_batches))
    print(f"train_vs_seed: {len(train_imgs)} train images ({len(tr_ids)} captions, {words} words), "
          f"{len(dev_imgs)} dev images, vocabulary {vsize}, {dim}-d features; seed batch {matched_batch}")

    def throughput(epoch_s: list[float]) -> float:
        steady = epoch_s[1:] or epoch_s
        return words / common.median(steady)

    cpu: dict[str, list[float]] = {"ours": [], "seed": [], "seed_b64": []}

    # ---- the seed's arrays. It pads every prefix to the longest caption of its training set:
    # all train captions, as when the seed trains on Flickr8k.
    all_train = corpus.split_images("train", args.full_images)
    full_ids, _ = corpus.encode(all_train)
    full_words = common.n_words(full_ids)
    full_max_len = int(caption_lengths(full_ids).max())
    max_len = int(max(full_max_len, caption_lengths(tr_ids).max(), caption_lengths(dv_ids).max()))
    prep_s, train_s = common.timed(lambda: seed_samples(tr_ids, tr_rows, feats, max_len, vsize))
    dev_s = seed_samples(dv_ids, dv_rows, feats, max_len, vsize, one_hot=False)
    assert len(train_s.words) == words

    # ---- ours and the seed (same number of steps per epoch), epochs interleaved so that any
    # drift in the machine's speed hits both alike
    job = common.member_jobs(params, vsize, common.cache_feature_file(corpus, args.cache, args.weights),
                             label_smoothing=args.label_smoothing)[0]
    model = common.compiled_member(job)
    ds = make_dataset(tr_ids, tr_rows, feats, job.batch_size, job.bucket_width, job.seed)
    seed = build_seed_model(vsize, dim, max_len, mp.embedding_dim, mp.units, mp.dropout, tp.learning_rate)
    ours_s, ours_val, seed_s, seed_val = [], [], [], []
    for e in range(1, args.epochs + 1):
        t, c, _ = common.timed_cpu(lambda: model.fit(ds, epochs=1, shuffle=False, verbose=0))
        ours_s.append(t)
        cpu["ours"].append(c)
        ours_val.append(common.ours_val_nll(model, dv_ids, dv_rows, feats))
        print(f"  ours  epoch {e}: {t:7.2f} s, {words / t:9.0f} words/s, dev NLL {ours_val[-1]:.4f}", flush=True)
        t, c, _ = common.timed_cpu(lambda: seed.fit([train_s.x1, train_s.x2], train_s.y, batch_size=matched_batch,
                                                    epochs=1, shuffle=True, verbose=0))
        seed_s.append(t)
        cpu["seed"].append(c)
        seed_val.append(seed_val_nll(seed, dev_s))
        print(f"  seed  epoch {e}: {t:7.2f} s, {words / t:9.0f} words/s, dev NLL {seed_val[-1]:.4f}", flush=True)

    # ---- seed at the tutorial's batch scale: one epoch after a 2-batch warm-up (tracing)
    seed64 = build_seed_model(vsize, dim, max_len, mp.embedding_dim, mp.units, mp.dropout, tp.learning_rate)
    warm = slice(0, 2 * args.seed_batch)
    seed64.fit([train_s.x1[warm], train_s.x2[warm]], train_s.y[warm], batch_size=args.seed_batch, verbose=0)
    t64, c64, _ = common.timed_cpu(lambda: seed64.fit([train_s.x1, train_s.x2], train_s.y,
                                                      batch_size=args.seed_batch, epochs=1, shuffle=True, verbose=0))
    cpu["seed_b64"].append(c64)
    val64 = seed_val_nll(seed64, dev_s)
    print(f"  seed (batch {args.seed_batch}) epoch 1: {t64:7.2f} s, {words / t64:9.0f} words/s, dev NLL {val64:.4f}")
    del train_s, seed, seed64

    ours_wps, seed_wps, seed_b64_wps = throughput(ours_s), throughput(seed_s), words / t64
    best_seed = max(seed_wps, seed_b64_wps)  # the speedup is against the faster seed variant
    # The same per CPU-second of this process (steadier when other work shares the machine).
    cpu_wps = {k: words / common.median(v[1:] or v) for k, v in cpu.items()}
    cpu_speedup = cpu_wps["ours"] / max(cpu_wps["seed"], cpu_wps["seed_b64"])
    val_gap = [abs(a - b) / b for a, b in zip(ours_val, seed_val)]

    # ---- the seed's arrays for all train images, from their shapes
    est = {f"{d}d": round(seed_bytes(full_words, d, full_max_len, vsize) / 1e9, 2) for d in (dim, 4096)}
    summary = {
        "train_words_per_s": common.rnd(ours_wps),
        "seed_train_words_per_s": common.rnd(best_seed),
        "train_speedup_vs_seed": common.rnd(ours_wps / best_seed),
        "train_speedup_vs_seed_cpu": common.rnd(cpu_speedup),
        "train_val_nll_max_rel_gap": common.rnd(max(val_gap)),
    }
    if child:
        summary.update(train_peak_rss_gb=child["peak_rss_gb"], train_full_words_per_s=child["words_per_s"])
    summary["seed_materialised_gb_estimate"] = est[f"{dim}d"]
    common.report("training throughput and memory (ours vs the seed's approach)", summary)
    part = {
        "summary": summary, "machine": info,
        "slice": {"train_images": len(train_imgs), "train_captions": len(tr_ids), "train_words": words,
                  "dev_images": len(dev_imgs), "dev_words": common.n_words(dv_ids), "vocab_size": vsize,
                  "feature_dim": dim, "seed_max_length": max_len},
        "ours": {"batch_captions": tp.batch_size, "label_smoothing": args.label_smoothing, "bucket_width": tp.bucket_width, "batches_per_epoch": n_batches,
                 "epoch_s": [round(s, 2) for s in ours_s], "words_per_s": common.rnd(ours_wps),
                 "dev_nll": [round(v, 4) for v in ours_val], "epoch_cpu_s": [round(v, 2) for v in cpu["ours"]],
                 "words_per_cpu_s": common.rnd(cpu_wps["ours"])},
        "seed": {"batch_samples": matched_batch, "prepare_s": round(prep_s, 2),
                 "epoch_s": [round(s, 2) for s in seed_s], "words_per_s": common.rnd(seed_wps),
                 "dev_nll": [round(v, 4) for v in seed_val], "epoch_cpu_s": [round(v, 2) for v in cpu["seed"]],
                 "words_per_cpu_s": common.rnd(cpu_wps["seed"])},
        "seed_b64": {"batch_samples": args.seed_batch, "epoch_s": round(t64, 2),
                     "words_per_s": common.rnd(seed_b64_wps), "dev_nll": round(val64, 4),
                     "epoch_cpu_s": round(c64, 2), "words_per_cpu_s": common.rnd(cpu_wps["seed_b64"])},
        "memory": {"full_train_images": len(all_train), "full_train_words": full_words,
                   "seed_max_length": full_max_len, "vocab_size": vsize,
                   "seed_materialised_gb_estimate": est, "ours_child": child},
    }
    common.write_part(args.out, part)
    return part


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
