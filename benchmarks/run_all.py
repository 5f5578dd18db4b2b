"""Run every benchmark (each in its own process) and merge their parts into metrics/bench.json.

    python benchmarks/run_all.py --data ../shared/flickr8k            # the suite (make bench)
    python benchmarks/run_all.py --data ../shared/flickr8k --quick    # smoke run, tiny sizes
    python benchmarks/run_all.py --only extract,inference             # some figures only

Order: scaling first (its 7,000-image extraction also fills the feature cache that training
and inference use), then extraction, training vs the seed, streamed vs in-memory features, inference, the HTTP service under
load (serve_load), incremental reruns, and last the COCO-size run (coco_scale, the longest).
metrics/bench.json: the headline figures at the top level, each script's part under "parts".
A quick run writes data/bench/bench-quick.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

SCRIPTS = ("scaling", "extract", "train_vs_seed", "stream", "inference", "serve_load", "repro", "coco_scale")
REQUIRED = (
    "extract_images_per_s", "extract_fraction_of_raw", "train_words_per_s", "seed_train_words_per_s",
    "train_speedup_vs_seed", "train_peak_rss_gb", "repro_train_change_s", "repro_full_s",
    "greedy_ms_per_image", "beam3_ms_per_image", "eval_1000_beam3_s",
)
SERVE_REQUIRED = ("serve_rps", "serve_p50_ms", "serve_p99_ms", "serve_5xx", "serve_bad_4xx_fraction")
STREAM_REQUIRED = ("stream_vs_memory_words_per_s",)  # stream.py
COCO_REQUIRED = (  # coco_scale.py, last: the longest
    "coco_feature_file_gb", "coco_text_peak_rss_gb", "coco_train_peak_rss_gb", "coco_train_words_per_s",
    "coco_eval_peak_rss_gb", "coco_eval_5000_beam3_s",
)


def merge_parts(out: Path, parts: Path, names: list[str], seconds: dict[str, float], quick: bool,
                data: str, info: dict | None = None) -> dict:
    """The existing `out` (if any) updated with the parts of `names`: their "summary" keys at the
    top level, each whole part under "parts" (so --only refreshes some figures, keeps the rest)."""
    merged: dict = json.loads(out.read_text()) if out.exists() else {}
    merged.setdefault("parts", {})
    for name in names:
        part = json.loads((parts / f"{name}.json").read_text())
        merged["parts"][name] = part
        merged.update(part.get("summary", {}))
    merged["quick"] = quick
    merged["machine"] = info or common.machine()
    merged["data"] = str(Path(data).resolve())
    merged.setdefault("seconds_per_script", {}).update(seconds)
    return merged


def write_bench(out: Path, merged: dict) -> None:
    """Write the merged figures with "parts" last (headline keys first when reading the file)."""
    from captioner.runtime.io import write_json

    write_json(out, {**{k: v for k, v in merged.items() if k != "parts"}, "parts": merged.get("parts", {})})


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=common.DEFAULT_DATA)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="merged JSON (default metrics/bench.json; quick: data/bench/bench-quick.json)")
    ap.add_argument("--parts", default=None, help="folder for the parts (default: beside --out's data/bench)")
    ap.add_argument("--cache", default=str(common.WORK / "cache"))
    ap.add_argument("--weights", default="imagenet", help="efficientnet_lite0 weights (none: tests)")
    ap.add_argument("--only", default=",".join(SCRIPTS), help=f"comma-separated subset of {','.join(SCRIPTS)}")
    ap.add_argument("--plot", default=None, help="scaling plot path (default docs/scaling.png)")
    args = ap.parse_args(argv)
    out = Path(args.out or (common.WORK / "bench-quick.json" if args.quick else common.REPO / "metrics/bench.json"))
    parts = Path(args.parts or common.WORK / ("parts-quick" if args.quick else "parts"))
    only = [s for s in SCRIPTS if s in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(SCRIPTS)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SCRIPTS)}")

    info = common.machine()
    print(f"bench: {info['cpu']}, {info['cores']} cores, load average {info['loadavg_at_start']}; "
          f"data {args.data}{' (quick)' if args.quick else ''}")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for name in only:
        cmd = [sys.executable, str(Path(__file__).resolve().parent / f"{name}.py"), "--data", args.data,
               "--out", str(parts / f"{name}.json"), "--cache", args.cache, "--weights", args.weights]
        if args.quick:
            cmd.append("--quick")
        if name == "scaling" and args.plot:
            cmd += ["--plot", args.plot]
        print(f"\n### {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=common.REPO).returncode
        seconds[name] = round(time.perf_counter() - t0, 1)
        if rc != 0:
            raise SystemExit(f"bench: {name} failed (exit {rc})")

    merged = merge_parts(out, parts, only, seconds, args.quick, args.data, info)
    merged["suite_s"] = round(time.perf_counter() - start, 1)
    write_bench(out, merged)

    common.report(f"all figures ({merged['suite_s']:.0f} s; {json.dumps(seconds)})",
                  {k: merged[k] for k in (*REQUIRED, *SERVE_REQUIRED, *STREAM_REQUIRED, *COCO_REQUIRED) if k in merged})
    missing = [k for k in (*REQUIRED, *SERVE_REQUIRED, *STREAM_REQUIRED, *COCO_REQUIRED) if k not in merged]
    if missing and set(only) == set(SCRIPTS):
        raise SystemExit(f"bench: missing keys {missing}")
    print(f"-> {out}")
    return merged


if __name__ == "__main__":
    main()
