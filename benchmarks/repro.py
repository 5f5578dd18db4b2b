"""Figure 3: incremental reruns. Wall time of `dvc repro` after a train-only parameter change vs
a full `dvc repro` from scratch, on the real data.

In a temporary git + DVC copy of the project (tracked and untracked-but-not-ignored files; no
data/, no metrics/), with params.yaml set to the Flickr8k preset, data.root = --data (quick: a
small slice of it, linked), evaluate.split = dev and train.epochs = --epochs (both runs):
  full          `dvc repro evaluate` from scratch: clean_text, extract_features, build_sequences,
                train, evaluate;
  train change  train.learning_rate halved, `dvc repro evaluate` again: must run train and
                evaluate only (extract_features reused from the first run);
  no change     `dvc repro evaluate` once more: nothing runs (DVC's own checking time).
Per-stage times come from the timestamps of DVC's "Running stage" lines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from benchmarks import common  # noqa: E402
from captioner.config.params import update_params_file  # noqa: E402

FULL = {"clean_text", "extract_features", "build_sequences", "train", "scst", "human_ceiling", "evaluate"}


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
        "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def sh(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def timed_repro(project: Path, log: Path) -> dict:
    """Run `dvc repro evaluate`; wall seconds, stages run and seconds per stage (from timestamps)."""
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with open(log, "a") as f, subprocess.Popen(
        ["dvc", "repro", "evaluate"], cwd=project, env=env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            if line.startswith("Running stage"):
                marks.append((line.split("'")[1], time.perf_counter() - start))
        rc = proc.wait()
    wall = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"dvc repro failed ({rc}); see {log}")
    ends = [t for _, t in marks[1:]] + [wall]
    return {"wall_s": round(wall, 1), "stages": [s for s, _ in marks],
            "stage_s": {s: round(e - t, 1) for (s, t), e in zip(marks, ends)}}


def make_slice(corpus: common.Corpus, dst: Path, n_train: int, n_dev: int) -> Path:
    """A Flickr8k-layout folder with the first images of train and dev (images linked)."""
    from captioner.datasets.readers import load_dataset

    ds = load_dataset(corpus.root)
    images = dst / "Flicker8k_Dataset"
    images.mkdir(parents=True)
    names: dict[str, str] = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        part = ds.images[ds.images["split"] == split].sort_values("image_id").head(n)
        (dst / f"Flickr_8k.{split}Images.txt").write_text(
            "".join(f"{Path(p).name}\n" for p in part["path"]))
        for image_id, path in zip(part["image_id"], part["path"]):
            (images / Path(path).name).symlink_to(Path(path).resolve())
            names[image_id] = Path(path).name
    caps = ds.captions[ds.captions["image_id"].isin(names.keys())]
    (dst / "Flickr8k.token.txt").write_text("".join(
        f"{names[r.image_id]}#{r.caption_no}\t{r.caption}\n" for r in caps.itertuples()), encoding="utf-8")
    return dst


def set_params(project: Path, updates: dict) -> None:
    update_params_file(project / "params.yaml", updates)


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser("repro", __doc__)
    ap.add_argument("--epochs", type=int, default=1, help="train.epochs for both runs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project (path printed)")
    args = ap.parse_args(argv)
    info = common.machine()
    params = common.bench_params()
    corpus = common.load_corpus(args.data, params)
    tmp = Path(tempfile.mkdtemp(prefix="captioner-bench-repro-"))
    try:
        project = tmp / "proj"
        project.mkdir()
        common.copy_project(project)
        root = make_slice(corpus, tmp / "data", 12, 6) if args.quick else corpus.root
        preset = yaml.safe_load(common.PRESET.read_text()) or {}
        set_params(project, {
            **preset,
            "data": {"root": str(root)},
            "features": {"weights": args.weights},
            "train": {**preset.get("train", {}), "epochs": args.epochs},
            "evaluate": {**preset.get("evaluate", {}), "split": "dev"},
        })
        sh(["git", "init", "-q"], project)
        sh(["git", "add", "-A"], project)
        sh(["git", "commit", "-qm", "bench"], project)
        log = tmp / "repro.log"
        n_images = len(list((Path(root) / "Flicker8k_Dataset").iterdir()))
        print(f"repro: {project} on {root} ({n_images} images), train.epochs={args.epochs}; log {log}")

        full = timed_repro(project, log)
        print(f"  full repro: {full['wall_s']} s  {full['stage_s']}", flush=True)
        if set(full["stages"]) != FULL:
            raise RuntimeError(f"the full repro ran {full['stages']}, expected {sorted(FULL)}")
        lr = yaml.safe_load((project / "params.yaml").read_text())["train"]["learning_rate"]
        set_params(project, {"train": {"learning_rate": lr / 2}})
        change = timed_repro(project, log)
        print(f"  after a train param change: {change['wall_s']} s  {change['stage_s']}", flush=True)
        if set(change["stages"]) != {"train", "scst", "evaluate"}:
            raise RuntimeError(f"a train param change ran {change['stages']}, expected train, scst + evaluate")
        noop = timed_repro(project, log)
        print(f"  nothing changed: {noop['wall_s']} s", flush=True)
        if noop["stages"]:
            raise RuntimeError(f"an unchanged project reran {noop['stages']}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    summary = {
        "repro_full_s": full["wall_s"],
        "repro_train_change_s": change["wall_s"],
        "repro_train_change_fraction": common.rnd(change["wall_s"] / full["wall_s"]),
        "repro_noop_s": noop["wall_s"],
    }
    common.report("incremental reruns (dvc repro evaluate)", summary)
    part = {"summary": summary, "machine": info, "images": n_images, "train_epochs": args.epochs,
            "change": f"train.learning_rate {lr} -> {lr / 2}", "full": full, "train_change": change,
            "no_change": noop}
    common.write_part(args.out, part)
    return part


if __name__ == "__main__":
    main()
