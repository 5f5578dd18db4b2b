"""Shared pieces of the benchmark scripts: arguments, the corpus as the pipeline builds it,
a feature cache, timing helpers, machine facts and the JSON parts.

Every script computes what it needs from `--data` (a Flickr8k-layout folder) itself; CNN
features that a script only *uses* (training, decoding) are kept in a cache under
`data/bench/cache` (git-ignored) so that the suite extracts each image once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

    from captioner.features.store import FeatureFile
    from captioner.training.fit import MemberJob

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "data" / "bench"  # git-ignored (/data/)
DEFAULT_DATA = "../shared/flickr8k"
PRESET = REPO / "presets" / "flickr8k.yaml"

# Headline figures and their targets: key -> (comparison, target).
TARGETS: dict[str, tuple[str, float]] = {
    "extract_fraction_of_raw": (">=", 0.90),
    "train_speedup_vs_seed": (">=", 10.0),
    "train_peak_rss_gb": ("<=", 3.0),
    "greedy_ms_per_image": ("<", 50.0),
    "beam3_ms_per_image": ("<", 150.0),
    "eval_1000_beam3_s": ("<", 30.0),
}


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The arguments every benchmark script takes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="a Flickr8k-layout folder (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, figures meaningless")
    ap.add_argument("--out", default=str(WORK / f"{name}.json"), help="this figure's JSON part")
    ap.add_argument("--cache", default=str(WORK / "cache"), help="feature cache folder")
    ap.add_argument("--weights", default="imagenet",
                    help="efficientnet_lite0 weights: imagenet | none (same compute; tests)")
    return ap


# ---------------------------------------------------------------- timing and output


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of fn()."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, this process's CPU seconds, result) of fn(). CPU time is the steadier
    measure on a machine shared with other work; wall time is what a user waits."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def rnd(x: float, digits: int = 3) -> float:
    """Round to `digits` significant digits (JSON-friendly figures)."""
    if x == 0 or not np.isfinite(x):
        return float(x)
    return float(f"{x:.{digits}g}")


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    """What the figures were measured on (and how busy it was at the start)."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu, "cores": cores, "memory_gb": mem_gb, "os": platform.platform(),
        "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": loadavg(),
    }


def write_part(path: str | os.PathLike[str], part: dict[str, Any]) -> None:
    """Write a figure's JSON part ({"summary": headline keys, ...details}) atomically."""
    from captioner.runtime.io import write_json

    part = {**part, "loadavg_at_end": loadavg()}
    write_json(path, part)
    print(f"-> {path}")


def report(title: str, rows: dict[str, Any]) -> None:
    """Print a figure's headline numbers."""
    print(f"\n== {title}")
    for k, v in rows.items():
        target = TARGETS.get(k)
        note = ""
        if target is not None and isinstance(v, (int, float)):
            op, t = target
            ok = {">=": v >= t, "<=": v <= t, "<": v < t}[op]
            note = f"   (target {op} {t:g}: {'met' if ok else 'MISSED'})"
        print(f"  {k:32s} {v}{note}")


# ---------------------------------------------------------------- params and corpus


def bench_params():
    """params.yaml with the Flickr8k preset applied (what `make flickr8k` trains with)."""
    from captioner.config.params import Params

    merged = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")) or {}
    for section, values in (yaml.safe_load(PRESET.read_text(encoding="utf-8")) or {}).items():
        merged.setdefault(section, {}).update(values)
    return Params.model_validate(merged)


@dataclass
class Corpus:
    """The data set as clean_text + build_sequences see it.

    images: image_id, split, path (absolute), sorted by image_id.
    captions: image_id, split, caption (cleaned, wrapped), one row per caption.
    """

    root: Path
    images: pd.DataFrame
    captions: pd.DataFrame
    vocab: Any
    max_length: int

    def split_images(self, split: str, n: int | None = None) -> list[str]:
        ids = self.images.loc[self.images["split"] == split, "image_id"].tolist()
        return ids if n is None else ids[:n]

    def encode(self, image_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N, max_length), image id of each row) for all captions of `image_ids`."""
        from captioner.datasets.sequences import encode_captions

        wanted = set(image_ids)
        caps = self.captions[self.captions["image_id"].isin(wanted)]
        ids = encode_captions(list(caps["caption"]), self.vocab, self.max_length)
        return ids, caps["image_id"].to_numpy()


def load_corpus(data: str | os.PathLike[str], params=None) -> Corpus:
    """Read, clean and index the captions of `data` exactly as the clean_text stage does."""
    from captioner.datasets.readers import load_dataset
    from captioner.datasets.text import build_vocabulary, clean_caption, wrap

    p = params or bench_params()
    root = Path(data).resolve()
    ds = load_dataset(root, p.data.layout, seed=p.data.seed, max_bad_fraction=p.data.max_bad_fraction)
    caps = ds.captions.sort_values(["image_id", "caption_no"]).reset_index(drop=True)
    caps["caption"] = [wrap(clean_caption(c, p.text.max_words)) for c in caps["caption"]]
    vocab = build_vocabulary(caps.loc[caps["split"] == "train", "caption"], p.text.min_count)
    images = ds.images[["image_id", "split", "path"]].sort_values("image_id").reset_index(drop=True)
    return Corpus(root, images, caps[["image_id", "split", "caption"]], vocab, p.sequences.max_length)


def n_words(ids: np.ndarray) -> int:
    """Predicted words in teacher forcing: every non-padding token after startseq."""
    return int((ids[:, 1:] != 0).sum())


# ---------------------------------------------------------------- feature cache


def cache_file(cache: str | os.PathLike[str], root: Path, backbone: str, weights: str) -> Path:
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:10]
    return Path(cache) / f"{backbone}-{weights}-{key}.parquet"


def features_for(
    corpus: Corpus, image_ids: Sequence[str], cache: str | os.PathLike[str],
    backbone: str = "efficientnet_lite0", weights: str = "imagenet", batch_size: int = 32, workers: int = 2,
) -> np.ndarray:
    """(len(image_ids), D) features, extracted once per image and kept in the cache."""
    from captioner.features.extract import extract_features
    from captioner.features.store import read_features, write_features

    path = cache_file(cache, corpus.root, backbone, weights)
    have_ids: list[str] = []
    have = np.zeros((0, 0), np.float32)
    if path.exists():
        have_ids, have, _ = read_features(path)
    index = {i: r for r, i in enumerate(have_ids)}
    missing = sorted(set(image_ids) - index.keys())
    if missing:
        from captioner.features.backbones import load_backbone

        print(f"features: extracting {len(missing)} image(s) with {backbone} for the cache {path}")
        paths = corpus.images.set_index("image_id").loc[missing, "path"].tolist()
        new = extract_features(paths, load_backbone(backbone, weights), batch_size, workers, progress=False)
        have_ids = [*have_ids, *missing]
        have = new if not len(have) else np.concatenate([have, new])
        write_features(path, have_ids, have, {"backbone": backbone, "weights": weights})
        index = {i: r for r, i in enumerate(have_ids)}
    return np.ascontiguousarray(have[[index[i] for i in image_ids]])


def feature_table(corpus: Corpus, image_ids: Sequence[str], cache: str | os.PathLike[str],
                  weights: str = "imagenet") -> Path:
    """The cache file, guaranteed to hold `image_ids` (a Parquet feature file like the pipeline's)."""
    features_for(corpus, image_ids, cache, weights=weights)
    return cache_file(cache, corpus.root, "efficientnet_lite0", weights)


def cache_feature_file(corpus: Corpus, cache: str | os.PathLike[str], weights: str = "imagenet") -> FeatureFile:
    """The cache as a `captioner.features.store.FeatureFile` (its width and layout: what
    `member_jobs` builds the members for)."""
    from captioner.features.store import FeatureFile

    return FeatureFile.open(cache_file(cache, corpus.root, "efficientnet_lite0", weights))


# ---------------------------------------------------------------- subprocesses


def run_json(cmd: list[str], cwd: Path = REPO) -> dict[str, Any]:
    """Run a Python child that prints one JSON line last; return that object."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def python() -> str:
    return sys.executable


# ---------------------------------------------------------------- the project's training


def member_jobs(params, vocab_size: int, features: FeatureFile, **changes: Any) -> list[MemberJob]:
    """The ensemble's member jobs exactly as the train stage makes them
    (`captioner.training.ensemble.member_jobs` over the feature file `features`, a
    `captioner.features.store.FeatureFile`): member i with seed train.seed + i, built by
    `captioner.model.build.build_member` from the `model` params. Trained in float32, as the
    benchmarks have always measured (the preset's train.precision `auto` would pick
    mixed_bfloat16 on a CPU with AVX512_BF16); `changes` override the jobs' fields
    (epochs, label_smoothing, ...)."""
    import dataclasses

    from captioner.training.ensemble import member_jobs as stage_jobs

    jobs = stage_jobs(params.model, params.train, vocab_size, features, "float32")
    return [dataclasses.replace(job, **changes) for job in jobs]


def compiled_member(job: MemberJob) -> keras.Model:
    """A fresh model of a `MemberJob`, seeded, built and compiled as
    `captioner.training.fit.train_member` does before it fits (one device): for the benchmarks
    that run and time the epochs themselves; the others call `train_member`."""
    import keras

    from captioner.training.fit import compiled_member as build_compiled

    keras.utils.set_random_seed(job.seed)
    return build_compiled(job)


def ours_val_nll(model, ids: np.ndarray, rows: np.ndarray, features: np.ndarray, batch_size: int = 256) -> float:
    """Mean negative log-likelihood per predicted word (inference mode), like `seed_val_nll`."""
    import tensorflow as tf

    from captioner.training.batches import caption_lengths, make_batch, plan_batches

    total, count = 0.0, 0
    for b in plan_batches(caption_lengths(ids), batch_size, 4, None):
        (f, x), y = make_batch(ids, rows, features, b)
        logp = tf.nn.log_softmax(model((f, x), training=False)).numpy()
        nll = -np.take_along_axis(logp, y[..., None].astype(np.int64), axis=-1)[..., 0]
        mask = y != 0
        total += float(nll[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def epoch_timer():
    """A Keras callback recording each epoch's wall time (training only, no validation)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None) -> None:
            self._last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            # up to the last training batch: excludes the validation pass, if any
            self.seconds.append(getattr(self, "_last", time.perf_counter()) - self._t)

    return EpochTimer()


# ---------------------------------------------------------------- extraction as the stage runs it


def extract_like_stage(paths: Sequence[str], backbone, batch_size: int, workers: int):
    """`captioner.features.extract.extract` called as stages/extract_features.py calls it: bad
    images skipped and every batch persisted as a resume shard, in a fresh folder (so nothing is
    read back); the features are also returned in memory (the stage's collect=False reads them
    back from the shards when it writes the file)."""
    import shutil
    import tempfile

    from captioner.features.extract import extract

    folder = tempfile.mkdtemp(prefix="bench-shards-", dir=WORK if WORK.is_dir() else None)
    try:
        return extract(paths, backbone, batch_size, workers, progress=False, on_error="skip", shards=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def copy_project(dst: Path) -> None:
    """The project's tracked and untracked-but-not-ignored files (no data/, no metrics/) into `dst`:
    a fresh checkout without git, for runs of the whole DAG (this benchmark suite and the tests)."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for f in files:
        if f.startswith(("data/", "metrics/")) or not (REPO / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)
