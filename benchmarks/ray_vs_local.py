"""Wall time of the `ray` engines against `local` on this machine, through the real stage scripts.

1. extract_features on every image of a Flickr8k-layout folder (`--data`, read in place, never
   copied): engine local, then engine ray (the stage starts its own local Ray, as on a laptop:
   the start-up is part of the overhead). The two feature files must be byte for byte equal.
2. train: an ensemble of `--members` merge models (`--epochs` epochs each, early stopping off)
   on the embedded scenes data set (generated here), engine local with `--threads`, and engine
   ray with the same threads and with 1 thread per member (members in parallel on 2 cores).

Writes a JSON part (default data/bench/ray_vs_local.json) with the times, the load average
before and after each run and the equality checks.

    .venv/bin/python benchmarks/ray_vs_local.py --data ../shared/flickr8k
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = REPO / "stages"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def stage(project: Path, script: str, *args: str) -> float:
    """Run one stage script in `project`; its wall time in seconds."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(STAGES / script), *args], cwd=project, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return seconds


def set_params(project: Path, updates: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def new_project(base: Path, name: str) -> Path:
    project = base / name
    project.mkdir()
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return project


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def timed(label: str, fn) -> dict:
    before = loadavg()
    seconds = fn()
    row = {"seconds": round(seconds, 1), "load_before": before, "load_after": loadavg()}
    print(f"{label}: {row}", flush=True)
    return row


def bench_extraction(base: Path, data: Path) -> dict:
    out: dict = {"data": str(data)}
    files = {}
    for engine in ("local", "ray"):
        project = new_project(base, f"extract_{engine}")
        set_params(project, {"data": {"root": str(data)}, "features": {"engine": engine}})
        out[engine] = timed(f"extract_features engine={engine}",
                            lambda p=project: stage(p, "extract_features.py", "--out", "f.parquet"))
        files[engine] = project / "f.parquet"
        out[engine]["images"] = json.loads((project / "f.report.json").read_text())["images"]
    out["same_bytes"] = sha(files["local"]) == sha(files["ray"])
    return out


def bench_ensemble(base: Path, members: int, epochs: int, threads: int) -> dict:
    prep = new_project(base, "scenes")
    stage(prep, "generate_scenes.py", "--out", "data/raw/scenes")
    stage(prep, "clean_text.py", "--out", "data/text")
    stage(prep, "extract_features.py", "--out", "data/features/f.parquet")
    stage(prep, "build_sequences.py", "--text", "data/text", "--out", "data/sequences")
    out: dict = {"data": "embedded scenes (1,000 images, 700 train x 5 captions)", "members": members,
                 "epochs": epochs, "model": "merge, default params.yaml model section"}
    models = {}
    for engine, th in (("local", threads), ("ray", threads), ("ray", 1)):
        name = f"{engine}_threads{th}"
        set_params(prep, {"train": {"engine": engine, "threads": th, "ensemble": members, "epochs": epochs,
                                    "patience": epochs + 1}})
        out[name] = timed(f"train engine={engine} threads={th}", lambda n=name: stage(
            prep, "train.py", "--features", "data/features/f.parquet", "--text", "data/text",
            "--sequences", "data/sequences", "--out", f"models/{n}", "--live", f"live/{n}"))
        models[name] = prep / "models" / name
    from captioner.model.folder import ModelFolder

    def weights(folder: Path) -> list[list[np.ndarray]]:
        return [m.get_weights() for m in ModelFolder.open(folder).load_models()]

    ref = weights(models[f"local_threads{threads}"])
    for name, folder in models.items():
        got = weights(folder)
        out[name]["max_abs_weight_diff_vs_local"] = float(max(
            np.max(np.abs(a - b)) for m1, m2 in zip(ref, got) for a, b in zip(m1, m2)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/flickr8k", help="Flickr8k-layout folder for the extraction")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-extract", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--out", default=str(REPO / "data/bench/ray_vs_local.json"))
    args = ap.parse_args()
    result: dict = {"cpus": len(os.sched_getaffinity(0)), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="ray_vs_local") as tmp:
        base = Path(tmp)
        if not args.skip_extract:
            result["extraction"] = bench_extraction(base, Path(args.data).resolve())
        if not args.skip_train:
            result["ensemble"] = bench_ensemble(base, args.members, args.epochs, args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
