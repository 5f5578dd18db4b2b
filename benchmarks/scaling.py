"""Figure 5: how extraction time and training time per epoch grow with the number of images.

For N in --sizes (default 1k, 2k, 4k, 7k: the first N of all train + dev images, sorted by id):
  extraction   `captioner.features.extract.extract` on the N JPEG paths as the extract_features stage
               calls it (backbone loaded and traced once, before the timings);
  training     one epoch of the project's training on all captions of the N images (fresh
               model, a 2-batch warm-up to trace first; batches as the train stage makes them).
A least-squares line t = a + b*N is fitted to each; R^2 near 1 and a per-image time that does
not rise with N mean linear growth. Writes a small plot (docs/scaling.png) with Pillow.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def linear_fit(x: list[float], y: list[float]) -> dict:
    import numpy as np

    xa, ya = np.asarray(x, float), np.asarray(y, float)
    b, a = np.polyfit(xa, ya, 1) if len(xa) > 1 else (ya[0] / xa[0], 0.0)
    pred = a + b * xa
    ss = float(((ya - ya.mean()) ** 2).sum())
    r2 = 1.0 - float(((ya - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    per = ya / xa
    return {"intercept_s": common.rnd(float(a)), "slope_ms_per_image": common.rnd(float(b) * 1e3),
            "r2": round(r2, 4), "per_image_ms": [common.rnd(float(v) * 1e3) for v in per],
            "per_image_max_over_min": common.rnd(float(per.max() / per.min()))}


def nice_step(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at least `raw` (axis tick spacing)."""
    if raw <= 0:
        return 1.0
    k = 10 ** math.floor(math.log10(raw))
    return next(m * k for m in (1, 2, 2.5, 5, 10) if m * k >= raw)


def plot(path: Path, sizes: list[int], series: list[tuple[str, list[float], dict, list[float], dict]],
         note: str) -> None:
    """Side-by-side panels, seconds vs images: wall time (blue points, red fitted line) and the
    process's CPU time (grey points and line), drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, pad = 520, 380, 60
    img = Image.new("RGB", (W * len(series), H + 30), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=14)
        small = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: bitmap font only
        font = small = ImageFont.load_default()
    xmax = max(sizes) * 1.05
    for p, (title, secs, fit, cpu, cfit) in enumerate(series):
        ox = p * W
        top = max(max(secs), max(cpu)) * 1.1
        step = nice_step(top / 5)
        ymax = step * math.ceil(top / step)
        x0, y0, x1, y1 = ox + pad, 40, ox + W - 20, H - 40

        def X(v: float) -> float:
            return x0 + (x1 - x0) * v / xmax

        def Y(v: float) -> float:
            return y1 - (y1 - y0) * v / ymax

        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text((x0, 12), title, fill="black", font=font)
        for t in range(round(ymax / step) + 1):
            vy = step * t
            d.line([x0 - 4, Y(vy), x0, Y(vy)], fill="black")
            d.text((x0 - 8, Y(vy)), f"{vy:g}", fill="black", font=small, anchor="rm")
        for n in sizes:
            d.line([X(n), y1, X(n), y1 + 4], fill="black")
            d.text((X(n), y1 + 6), f"{n:,}", fill="black", font=small, anchor="ma")
        d.text(((x0 + x1) / 2, y1 + 22), "images", fill="black", font=small, anchor="ma")
        d.text((ox + 6, y0 - 4), "s", fill="black", font=small)
        for f, pts, line_colour, dot, label, dy in (
            (cfit, cpu, (150, 150, 150), (150, 150, 150), "CPU time", 26),
            (fit, secs, (200, 60, 60), (30, 80, 200), "wall time", 8),
        ):
            a, b = f["intercept_s"], f["slope_ms_per_image"] / 1e3
            start = max(0.0, -a / b) if b > 0 and a < 0 else 0.0  # keep the line inside the box
            end = min(xmax, (ymax - a) / b) if b > 0 else xmax
            d.line([X(start), Y(a + b * start), X(end), Y(a + b * end)], fill=line_colour, width=2)
            for n, v in zip(sizes, pts):
                d.ellipse([X(n) - 5, Y(v) - 5, X(n) + 5, Y(v) + 5], fill=dot)
            d.text((x0 + 8, y0 + dy), f"{label}: {a:.2f} s + {b * 1e3:.2f} ms/image, R^2 {f['r2']:.4f}",
                   fill=line_colour, font=small)
    d.text((10, H + 8), note, fill=(90, 90, 90), font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser("scaling", __doc__)
    ap.add_argument("--sizes", default="1000,2000,4000,7000", help="(quick: 4,8,12)")
    ap.add_argument("--plot", default=None, help="PNG path (default docs/scaling.png; quick: next to --out)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = "4,8,12"
    plot_path = Path(args.plot or (Path(args.out).with_suffix(".png") if args.quick else common.REPO / "docs/scaling.png"))

    import keras
    import numpy as np

    from captioner.features.backbones import load_backbone
    from captioner.training.batches import make_dataset

    params = common.bench_params()
    info = common.machine()
    fp = params.features
    corpus = common.load_corpus(args.data, params)
    images = corpus.images
    sizes = [n for n in (int(s) for s in args.sizes.split(",")) if n <= len(images)] or [len(images)]
    if len(sizes) < len(args.sizes.split(",")):
        print(f"scaling: only {len(images)} images: sizes {sizes}")
    backbone = load_backbone("efficientnet_lite0", args.weights)
    backbone.forward(backbone.preprocess(np.zeros((2, backbone.input_size, backbone.input_size, 3), np.uint8)))

    extract_s, train_s, words = [], [], []
    extract_cpu, train_cpu = [], []  # this process's CPU seconds: steadier on a shared machine
    features = None
    for n in sizes:
        paths = images["path"].tolist()[:n]
        t, c, res = common.timed_cpu(lambda: common.extract_like_stage(paths, backbone, fp.batch_size, fp.workers))
        extract_s.append(t)
        extract_cpu.append(c)
        features = res.features
        print(f"  {n:5d} images: extraction {t:7.1f} s ({n / t:.1f} img/s)", flush=True)
    del backbone
    # Fill the feature cache for the other figures (the largest run covers every smaller one).
    from captioner.features.store import write_features

    cache = common.cache_file(args.cache, corpus.root, "efficientnet_lite0", args.weights)
    if not cache.exists() and features is not None:
        write_features(cache, images["image_id"].tolist()[: sizes[-1]], features,
                       {"backbone": "efficientnet_lite0", "weights": args.weights})

    all_ids = images["image_id"].tolist()
    job = common.member_jobs(params, len(corpus.vocab), common.cache_feature_file(corpus, args.cache, args.weights))[0]
    for n in sizes:
        ids, img = corpus.encode(all_ids[:n])
        row_of = {i: r for r, i in enumerate(all_ids[:n])}
        rows = np.array([row_of[i] for i in img])
        model = common.compiled_member(job)  # member 0, as stages/train.py builds it
        ds = make_dataset(ids, rows, features, job.batch_size, job.bucket_width, job.seed)
        model.fit(ds.take(2), epochs=1, shuffle=False, verbose=0)  # trace the train step
        t, c, _ = common.timed_cpu(lambda: model.fit(ds, epochs=1, shuffle=False, verbose=0))
        train_s.append(t)
        train_cpu.append(c)
        words.append(common.n_words(ids))
        print(f"  {n:5d} images: training epoch {t:7.1f} s ({words[-1] / t:.0f} words/s)", flush=True)
        del model
        keras.backend.clear_session()

    fits = {"extract": linear_fit(sizes, extract_s), "train_epoch": linear_fit(sizes, train_s),
            "extract_cpu": linear_fit(sizes, extract_cpu), "train_epoch_cpu": linear_fit(sizes, train_cpu)}
    summary = {
        "scaling_sizes": sizes,
        "scaling_extract_s": [round(s, 2) for s in extract_s],
        "scaling_train_epoch_s": [round(s, 2) for s in train_s],
        "scaling_extract_r2": fits["extract"]["r2"],
        "scaling_train_r2": fits["train_epoch"]["r2"],
        "scaling_extract_cpu_r2": fits["extract_cpu"]["r2"],
        "scaling_train_cpu_r2": fits["train_epoch_cpu"]["r2"],
    }
    common.report("scaling with the number of images", summary)
    note = (f"{info['cpu']}, {info['cores']} cores, {info['date']}; efficientnet_lite0 features; "
            f"one epoch = all captions of the images")
    plot(plot_path, sizes, [
        ("feature extraction (JPEG files -> features)", extract_s, fits["extract"], extract_cpu, fits["extract_cpu"]),
        ("training, one epoch", train_s, fits["train_epoch"], train_cpu, fits["train_epoch_cpu"]),
    ], note)
    print(f"plot -> {plot_path}")
    part = {"summary": summary, "machine": info, "train_words": words, "fits": fits,
            "extract_cpu_s": [round(v, 2) for v in extract_cpu], "train_epoch_cpu_s": [round(v, 2) for v in train_cpu],
            "plot": str(plot_path)}
    common.write_part(args.out, part)
    return part


if __name__ == "__main__":
    main()
