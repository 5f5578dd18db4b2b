"""Streamed vs in-memory features: training words/s on the same data, in the same process.

  memory   captioner.training.batches.make_dataset over the whole feature array (read_features);
  stream   captioner.training.batches.make_streamed_dataset over the Parquet file, in windows of
           `--window-mb` of row groups (the train stage's path), the file written with row
           groups of `--group-mb` so that an epoch really crosses several windows.
Both models start from the same weights (same seed); their epochs are interleaved so that any
drift in the machine's speed hits both alike. Throughput: train batches only, the median over
epochs 2.. (epoch 1 includes graph tracing). Key: stream_vs_memory_words_per_s (target >= 0.9).

    python benchmarks/stream.py --data ../shared/flickr8k
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser("stream", __doc__)
    ap.add_argument("--train-images", type=int, default=None, help="train images (default all; quick: 24)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each path (quick: 2)")
    ap.add_argument("--group-mb", type=float, default=2.0, help="feature file row groups (MB as float32)")
    ap.add_argument("--window-mb", type=float, default=4.0, help="streamed window (MB of stored features)")
    args = ap.parse_args(argv)
    if args.quick:
        args.train_images, args.epochs, args.group_mb, args.window_mb = 24, 2, 0.02, 0.03

    from captioner.datasets.sequences import image_rows
    from captioner.features.store import FeatureFile, read_features, write_features
    from captioner.training.batches import make_dataset, make_streamed_dataset, window_groups

    params = common.bench_params()
    corpus = common.load_corpus(args.data, params)
    imgs = corpus.split_images("train", args.train_images)
    feats = common.features_for(corpus, imgs, args.cache, weights=args.weights)
    path = Path(args.out).with_suffix(".features.parquet")
    write_features(path, imgs, feats, {"backbone": "efficientnet_lite0", "weights": args.weights},
                   row_group_bytes=int(args.group_mb * 2**20))
    file = FeatureFile.open(path)
    window = window_groups(file, args.window_mb)
    ids, img = corpus.encode(imgs)
    ids_mem, in_memory, _ = read_features(path)
    rows = image_rows(img, ids_mem)
    words = common.n_words(ids)
    windows = -(-file.groups // window)
    print(f"stream: {len(imgs)} train images, {len(ids)} captions, {words} words; {file.groups} row groups, "
          f"{window} per window ({windows} windows)", flush=True)

    job = common.member_jobs(params, len(corpus.vocab), file)[0]  # member 0, as stages/train.py builds it
    datasets = {
        "memory": make_dataset(ids, rows, in_memory, job.batch_size, job.bucket_width, job.seed),
        "stream": make_streamed_dataset(file, ids, rows, job.batch_size, job.bucket_width, window, job.seed),
    }
    models = {k: common.compiled_member(job) for k in datasets}  # the same initial weights
    seconds: dict[str, list[float]] = {k: [] for k in datasets}
    for e in range(1, args.epochs + 1):
        for k, ds in datasets.items():
            t, _ = common.timed(lambda: models[k].fit(ds, epochs=1, shuffle=False, verbose=0))
            seconds[k].append(t)
            print(f"  {k:6s} epoch {e}: {t:7.2f} s, {words / t:9.0f} words/s", flush=True)
    wps = {k: words / common.median(v[1:] or v) for k, v in seconds.items()}
    path.unlink()
    summary = {
        "stream_words_per_s": common.rnd(wps["stream"]),
        "memory_words_per_s": common.rnd(wps["memory"]),
        "stream_vs_memory_words_per_s": common.rnd(wps["stream"] / wps["memory"]),
    }
    common.report("training words/s, features streamed vs in memory", summary)
    part = {"summary": summary, "machine": common.machine(),
            "data": {"train_images": len(imgs), "captions": len(ids), "words": words, "row_groups": file.groups,
                     "groups_per_window": window, "windows": windows, "feature_dim": file.dim,
                     "batch_size": job.batch_size},
            "epoch_s": {k: [round(s, 2) for s in v] for k, v in seconds.items()}}
    common.write_part(args.out, part)
    return part


if __name__ == "__main__":
    main()
