"""Print the results of metrics/bench.json as the Markdown tables of docs/BENCHMARKS.md.

    python benchmarks/report.py [metrics/bench.json]

Paste the output over the "Results" section after a new `make bench`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, TARGETS  # noqa: E402


def verdict(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, t = TARGETS[key]
    ok = {">=": value >= t, "<=": value <= t, "<": value < t}[op]
    return f"{op} {t:g}: {'**met**' if ok else '**missed**'}"


def render(b: dict) -> str:
    p = b.get("parts", {})
    m = b["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}; "
        f"Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}. "
        f"Load average at the start: {m['loadavg_at_start']}. Suite: {b.get('suite_s', 0) / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in b.get('seconds_per_script', {}).items())} min)."
        + (" **Quick run: the figures mean nothing.**" if b.get("quick") else ""),
        "",
        "| figure | key | value | target |",
        "|---|---|---|---|",
    ]

    def row(fig: str, key: str, unit: str = "") -> None:
        if key in b:
            lines.append(f"| {fig} | `{key}` | {b[key]}{unit} | {verdict(key, b[key])} |")

    row("1 extraction, efficientnet_lite0, from JPEG files", "extract_images_per_s", " img/s")
    row("1 raw network, decoded tensors", "extract_raw_images_per_s", " img/s")
    row("1 fraction of raw", "extract_fraction_of_raw")
    row("1 extraction, vgg16, from JPEG files", "extract_vgg16_images_per_s", " img/s")
    row("1 vgg16 fraction of raw", "extract_vgg16_fraction_of_raw")
    row("2 training, ours", "train_words_per_s", " words/s")
    row("2 training, seed's approach", "seed_train_words_per_s", " words/s")
    row("2 speedup (wall)", "train_speedup_vs_seed", "x")
    row("2 speedup (CPU time)", "train_speedup_vs_seed_cpu", "x")
    row("2 dev NLL, largest relative gap per epoch", "train_val_nll_max_rel_gap")
    row("2 peak RSS, all train images", "train_peak_rss_gb", " GB")
    row("2 training, all train images", "train_full_words_per_s", " words/s")
    row("2 seed's arrays, all train images (estimate)", "seed_materialised_gb_estimate", " GB")
    row("3 `dvc repro` from scratch", "repro_full_s", " s")
    row("3 `dvc repro` after a train param change", "repro_train_change_s", " s")
    row("3 ratio", "repro_train_change_fraction")
    row("3 `dvc repro`, nothing changed", "repro_noop_s", " s")
    row("4 greedy, batch 1", "greedy_ms_per_image", " ms")
    row("4 beam 3, batch 1", "beam3_ms_per_image", " ms")
    row("4 1,000 dev images, beam 3", "eval_1000_beam3_s", " s")
    row("4 1,000 dev images, greedy", "eval_1000_greedy_s", " s")
    row("4 greedy, batch 1, single model", "greedy_single_ms_per_image", " ms")
    row("4 beam 3, batch 1, single model", "beam3_single_ms_per_image", " ms")
    row("4 1,000 dev images, beam 3, single model", "eval_1000_beam3_single_s", " s")
    row("5 extraction linear fit R^2 (wall)", "scaling_extract_r2")
    row("5 extraction linear fit R^2, CPU time", "scaling_extract_cpu_r2")
    row("5 training linear fit R^2 (wall)", "scaling_train_r2")
    row("5 training linear fit R^2, CPU time", "scaling_train_cpu_r2")

    if "train_vs_seed" in p:
        t = p["train_vs_seed"]
        sl = t["slice"]
        lines += ["", f"Training slice: {sl['train_images']} train images, {sl['train_captions']} captions, "
                      f"{sl['train_words']} words; dev slice {sl['dev_images']} images ({sl['dev_words']} words); "
                      f"vocabulary {sl['vocab_size']}; the seed pads to {sl['seed_max_length']} tokens.", "",
                  "| epoch | ours s | seed s | ours dev NLL | seed dev NLL |", "|---|---|---|---|---|"]
        o, s = t["ours"], t["seed"]
        for i, (a, c, d, e) in enumerate(zip(o["epoch_s"], s["epoch_s"], o["dev_nll"], s["dev_nll"]), 1):
            lines.append(f"| {i} | {a} | {c} | {d} | {e} |")
        lines.append(f"| seed, batch {t['seed_b64']['batch_samples']} | | {t['seed_b64']['epoch_s']} | | "
                     f"{t['seed_b64']['dev_nll']} |")
        child = t["memory"].get("ours_child")
        if child:
            lines += ["", f"All train images ({child['train_images']} images, {child['train_words']} words, "
                          f"{child.get('ensemble', 1)} model(s) x {child['epochs']} epoch, label smoothing "
                          f"{child.get('label_smoothing', 0)}): epoch {child['epoch_s']} s, peak RSS "
                          f"{child['peak_rss_gb']} GB (VmHWM; ru_maxrss {child.get('ru_maxrss_gb')} GB; after "
                          f"imports {child.get('hwm_after_import_gb')} GB). The seed's materialised arrays "
                          f"for the same data: {t['memory']['seed_materialised_gb_estimate']} GB (by feature size)."]
    if "inference" in p:
        i = p["inference"]
        lines += ["", f"Decoding: {i['variants']['pipeline']} (the evaluate params); *single*: "
                      f"{i['variants']['single']}.", "",
                  "| decoding | ms/image median | mean | p90 | mean words |", "|---|---|---|---|---|"]
        for k in ("greedy", "beam3", "greedy_single", "beam3_single"):
            if f"latency_{k}" not in i:
                continue
            r = i[f"latency_{k}"]
            lines.append(f"| {k}, batch 1 ({r['images']} images x {r['repeats']}) | {r['ms_median']} | "
                         f"{r['ms_mean']} | {r['ms_p90']} | {r['mean_words']} |")
        for k in ("3", "1", "3_single", "1_single"):
            if f"dev_beam{k}" not in i:
                continue
            r = i[f"dev_beam{k}"]
            lines.append(f"| {r['images']} dev images, beam {k}, batches of {r['batch_size']} | "
                         f"{r['s_median']} s in all | {r['images_per_s']} img/s | | {r['mean_words']} |")
    if "repro" in p:
        r = p["repro"]
        lines += ["", f"`dvc repro evaluate` on {r['images']} images, train.epochs={r['train_epochs']}, "
                      f"change: {r['change']}.", "",
                  "| run | wall s | stages (s) |", "|---|---|---|"]
        for name, key in (("from scratch", "full"), ("train param changed", "train_change"),
                          ("nothing changed", "no_change")):
            lines.append(f"| {name} | {r[key]['wall_s']} | {r[key]['stage_s'] or '-'} |")
    if "scaling" in p:
        s = p["scaling"]
        su = s["summary"]
        lines += ["", "| images | " + " | ".join(f"{n:,}" for n in su["scaling_sizes"]) + " | fit |",
                  "|---|" + "---|" * (len(su["scaling_sizes"]) + 1)]
        for label, values, fit in (
            ("extraction s (wall)", su["scaling_extract_s"], "extract"),
            ("extraction s (CPU)", s.get("extract_cpu_s"), "extract_cpu"),
            ("training s / epoch (wall)", su["scaling_train_epoch_s"], "train_epoch"),
            ("training s / epoch (CPU)", s.get("train_epoch_cpu_s"), "train_epoch_cpu"),
        ):
            if values is None:
                continue
            f = s["fits"][fit]
            lines.append(f"| {label} | " + " | ".join(str(v) for v in values) +
                         f" | {f['intercept_s']} s + {f['slope_ms_per_image']} ms/image, R^2 {f['r2']} |")
        for label, fit in (("extraction ms / image", "extract"), ("training ms / image", "train_epoch")):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in s["fits"][fit]["per_image_ms"]) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0]) if args else REPO / "metrics/bench.json"
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
