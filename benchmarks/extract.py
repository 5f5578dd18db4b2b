"""Figure 1: feature extraction from JPEG files on disk vs the raw network on decoded tensors.

For each backbone, in the same process and alternating in each repeat:
  raw   the network alone (`Backbone.forward`) on batches already decoded *and* preprocessed
        in memory: the ceiling for extraction on this machine;
  disk  `captioner.features.extract.extract` on the JPEG paths, called as the extract_features stage
        calls it (decode threads overlapped with the network, preprocess, forward, bad images
        skipped, each batch persisted as a resume shard).
extract_fraction_of_raw = disk / raw images per second (median of the per-repeat ratios).
Files are read once before timing, so both sides run with a warm page cache.

vgg16 runs with weights "none": the same compute as ImageNet weights (which need a download).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def bench_backbone(name: str, weights: str, paths: list[str], batch_size: int, workers: int,
                   repeats: int) -> dict:
    import numpy as np

    from captioner.features.backbones import load_backbone
    from captioner.features.extract import decoded_batches
    from captioner.features.images import load_image

    load_s, backbone = common.timed(lambda: load_backbone(name, weights))
    size = backbone.input_size
    # Warm the page cache and time decoding alone (the decode threads' share of the work).
    decode_s, _ = common.timed(lambda: [b for b in decoded_batches(paths, size, batch_size, workers)])
    pixels = np.stack([load_image(p, size) for p in paths])
    inputs = [backbone.preprocess(pixels[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    trace_s, _ = common.timed(lambda: backbone.forward(inputs[0]))  # tf.function trace

    def raw() -> None:
        for x in inputs:
            backbone.forward(x)

    def disk() -> None:
        common.extract_like_stage(paths, backbone, batch_size, workers)

    n = len(paths)
    raw_rate, disk_rate, ratio = [], [], []
    for r in range(repeats):
        order = (raw, disk) if r % 2 == 0 else (disk, raw)  # alternate: drift hits both sides
        t = {fn.__name__: common.timed(fn)[0] for fn in order}
        raw_rate.append(n / t["raw"])
        disk_rate.append(n / t["disk"])
        ratio.append(t["raw"] / t["disk"])
        print(f"  {name} repeat {r + 1}: raw {n / t['raw']:.1f} img/s, from disk {n / t['disk']:.1f} img/s "
              f"({t['raw'] / t['disk']:.1%})")
    return {
        "weights": weights, "images": n, "batch_size": batch_size, "workers": workers, "repeats": repeats,
        "load_s": common.rnd(load_s), "trace_s": common.rnd(trace_s),
        "decode_only_images_per_s": common.rnd(n / decode_s),
        "raw_images_per_s": common.rnd(common.median(raw_rate)),
        "disk_images_per_s": common.rnd(common.median(disk_rate)),
        "fraction_of_raw": common.rnd(common.median(ratio)),
        "runs": {"raw_images_per_s": [common.rnd(v) for v in raw_rate],
                 "disk_images_per_s": [common.rnd(v) for v in disk_rate]},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser("extract", __doc__)
    ap.add_argument("--images", type=int, default=1000, help="efficientnet_lite0 images (quick: 32)")
    ap.add_argument("--vgg-images", type=int, default=32, help="vgg16 images (quick: 2)")
    ap.add_argument("--vgg-batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="(quick: 1)")
    ap.add_argument("--backbones", default="efficientnet_lite0,vgg16")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.vgg_images, args.vgg_batch_size, args.repeats = 32, 2, 2, 1
    params = common.bench_params()
    info = common.machine()
    corpus = common.load_corpus(args.data, params)
    all_paths = corpus.images["path"].tolist()
    out: dict = {"machine": info}
    for name in args.backbones.split(","):
        lite = name == "efficientnet_lite0"
        n = args.images if lite else args.vgg_images
        batch = params.features.batch_size if lite else args.vgg_batch_size
        print(f"extract: {name}, {min(n, len(all_paths))} images, batch {batch}, "
              f"{params.features.workers} decode threads")
        out[name] = bench_backbone(name, args.weights if lite else "none", all_paths[:n], batch,
                                   params.features.workers, args.repeats)
    summary = {}
    if "efficientnet_lite0" in out:
        summary.update(extract_images_per_s=out["efficientnet_lite0"]["disk_images_per_s"],
                       extract_raw_images_per_s=out["efficientnet_lite0"]["raw_images_per_s"],
                       extract_fraction_of_raw=out["efficientnet_lite0"]["fraction_of_raw"])
    if "vgg16" in out:
        summary.update(extract_vgg16_images_per_s=out["vgg16"]["disk_images_per_s"],
                       extract_vgg16_raw_images_per_s=out["vgg16"]["raw_images_per_s"],
                       extract_vgg16_fraction_of_raw=out["vgg16"]["fraction_of_raw"])
    common.report("feature extraction (images/s from JPEG files vs raw network)", summary)
    part = {"summary": summary, **out}
    common.write_part(args.out, part)
    return part


if __name__ == "__main__":
    main()
