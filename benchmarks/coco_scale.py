"""COCO-size run, measured: a synthetic data set the size of MS-COCO's Karpathy split,
pushed through the pipeline's own stages, each stage its own process.

    python benchmarks/coco_scale.py --data ../shared/flickr8k                  # 123,287 images (~15 GB features)
    python benchmarks/coco_scale.py --data ../shared/flickr8k --images 3000    # reduced size
    python benchmarks/coco_scale.py --data ../shared/flickr8k --quick          # smoke run (tests)

What it builds (in data/bench/coco_scale/coco/, a workspace with its own params.yaml):
- `dataset_coco.json` in Karpathy's layout: `--images` image entries (113,287 train+restval,
  5,000 val, 5,000 test at full size, in proportion below it), 5 captions each, sampled from a
  word-bigram model fitted on the training captions of `--data` (so caption lengths and Zipf word
  frequencies are those of real captions), and an empty placeholder file per image (no image is
  ever decoded);
- the clean_text and build_sequences outputs (the stages run on that JSON);
- `data/features/efficientnet_lite0.parquet`: a 49 x 1280 float16 grid per image id that
  clean_text produced, written row group by row group (never the whole array in memory), each
  value drawn from the per-channel value distribution of real EfficientNet-Lite0 grids (256
  quantiles per channel, so the zero fraction and the value spread match), measured on the
  Flickr8k grid features that this script extracts (and caches) with the pipeline's stage.

What it measures: feature-file size; clean_text and build_sequences wall time and peak RSS;
train (the attention preset's model, `train.epochs` 1, `train.max_batches` --steps) words/s and
peak RSS; evaluate on the dev split (5,000 images at full size) greedy and beam 3: decode time,
stage time, peak RSS. The same training and evaluation run on Flickr8k's real grid features
(`--compare real`, default) or on a Flickr8k-size synthetic set (`--compare synthetic`), and the
cost ratios coco / flickr8k are checked against the targets (within 10%). Peak RSS of a stage =
the larger of the stage process's own VmHWM and the sampled RSS sum of its process tree (the
evaluate stage runs a JVM for METEOR and the PTB tokenizer).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from benchmarks import common  # noqa: E402

REPO = common.REPO
ATTENTION_PRESET = REPO / "presets" / "flickr8k-attention.yaml"
COCO_SPLITS = {"train": 82783, "restval": 30504, "val": 5000, "test": 5000}  # Karpathy's COCO split
FLICKR_SPLITS = {"train": 6000, "val": 1000, "test": 1000}  # a Flickr8k-size synthetic set
FULL = sum(COCO_SPLITS.values())  # 123,287
REGIONS, CHANNELS = 49, 1280
DIM = REGIONS * CHANNELS
TINY_EVAL_IMAGES = 256  # = evaluate.batch_size: evaluate's fixed cost, measured on this many dev images
MIN_MARGINAL_IMAGES = 200  # the marginal cost needs a dev split of at least 256 + this many images
TRAIN_DEV_IMAGES = 1000  # the train stage validates on the first this many dev images (Flickr8k's dev size)
QUANTILES = 256
GB = 1e9
TARGET_RSS_GB = 4.0
TARGET_COST_RATIO = 1.10
# Fallback value model when no real grid features are at hand (--quick, --weights none): the
# zero fraction and the mean of the non-zero values measured on real Lite0 grids of Flickr8k.
FALLBACK_ZERO_FRACTION = 0.88
FALLBACK_NONZERO_MEAN = 2.0


# ---------------------------------------------------------------- progress


class Progress:
    """Prints `label: done/total (x%), elapsed, ETA` at most every `every` seconds and at the end."""

    def __init__(self, label: str, total: int, every: float = 15.0) -> None:
        self.label, self.total, self.every = label, max(total, 1), every
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        el = now - self.start
        eta = el / done * (self.total - done) if done else float("nan")
        print(f"  {self.label}: {done:,}/{self.total:,} ({done / self.total:.0%}), {el:.0f} s, ETA {eta:.0f} s",
              flush=True)


# ---------------------------------------------------------------- captions


class Bigram:
    """A word-bigram model of cleaned captions, sampled for all captions at once (vectorised)."""

    def __init__(self, captions: list[str]) -> None:
        from captioner.datasets.text import clean_caption

        tokenised = [clean_caption(c).split() for c in captions]
        tokenised = [t for t in tokenised if t]
        words = sorted({w for t in tokenised for w in t})
        self.words = np.array(words, dtype=object)
        index = {w: i for i, w in enumerate(words)}
        v = len(words)
        self.bos, self.eos = v, v + 1
        prev, nxt = [], []
        for t in tokenised:
            ids = [self.bos, *(index[w] for w in t), self.eos]
            prev.extend(ids[:-1])
            nxt.extend(ids[1:])
        prev.append(self.eos)
        nxt.append(self.eos)  # the end state stays there
        pairs, counts = np.unique(np.array(prev, np.int64) * (v + 2) + np.array(nxt, np.int64), return_counts=True)
        rows, self.next = pairs // (v + 2), (pairs % (v + 2)).astype(np.int32)
        self.start = np.searchsorted(rows, np.arange(v + 2))
        cum = np.zeros(len(counts), np.float64)
        for r in np.unique(rows):  # per-row cumulative probabilities, last = exactly 1
            a, b = self.start[r], self.start[r + 1] if r + 1 < v + 2 else len(counts)
            c = np.cumsum(counts[a:b], dtype=np.float64)
            cum[a:b] = c / c[-1]
            cum[b - 1] = 1.0
        self.keys = rows + cum  # row r's keys lie in (r, r + 1]
        self.source_captions = len(tokenised)
        self.source_vocab = v

    def sample(self, n: int, rng: np.random.Generator, max_words: int = 40) -> list[list[str]]:
        state = np.full(n, self.bos, np.int64)
        out = np.full((n, max_words), -1, np.int32)
        for t in range(max_words):
            idx = np.searchsorted(self.keys, state + rng.random(n), side="right")
            state = self.next[idx].astype(np.int64)
            if (state == self.eos).all():
                break
            out[:, t] = np.where(state == self.eos, -1, state)
        caps = []
        for row in out:
            ids = row[row >= 0]
            caps.append(list(self.words[ids]) if len(ids) else ["a"])
        return caps


def split_sizes(n: int, full: dict[str, int]) -> dict[str, int]:
    """`full`'s split sizes scaled to n images (largest remainder; each split at least 1)."""
    total = sum(full.values())
    exact = {s: n * k / total for s, k in full.items()}
    out = {s: max(1, int(math.floor(v))) for s, v in exact.items()}
    for s in sorted(full, key=lambda s: -(exact[s] - math.floor(exact[s])))[: max(0, n - sum(out.values()))]:
        out[s] += 1
    return out


def coco_layout_supported() -> bool:
    """Whether this checkout's readers know Karpathy's COCO file (dataset_coco.json)."""
    folder = REPO / "src" / "captioner" / "datasets"
    return any("dataset_coco.json" in p.read_text(encoding="utf-8") for p in folder.glob("*.py"))


def write_karpathy(root: Path, sizes: dict[str, int], bigram: Bigram, seed: int, coco_file: bool) -> dict[str, Any]:
    """Karpathy-layout JSON for sum(sizes) images x 5 captions + an empty file per image.

    coco_file: `dataset_coco.json`, images under <root>/<filepath>/ (train2014, val2014); else
    (a checkout without the COCO reader) `dataset_flickr8k.json` with the images in <root>/Images/.
    """
    rng = np.random.default_rng(seed)
    n = sum(sizes.values())
    root.mkdir(parents=True, exist_ok=True)
    cocoids = np.sort(rng.choice(600_000, size=n, replace=False)) + 1
    splits = [s for s, k in sizes.items() for _ in range(k)]
    splits = [splits[i] for i in rng.permutation(n)]
    name = "dataset_coco.json" if coco_file else "dataset_flickr8k.json"
    progress = Progress(f"{name}: images", n)
    chunk = 20_000
    n_words = 0
    dirs: set[Path] = set()
    with open(root / name, "w", encoding="utf-8") as f:
        f.write('{"dataset": "coco", "images": [')
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            caps = bigram.sample((stop - start) * 5, rng)
            entries = []
            for i in range(start, stop):
                folder = "train2014" if splits[i] == "train" else "val2014"
                filename = f"COCO_{folder}_{cocoids[i]:012d}.jpg"
                sents = []
                for k in range(5):
                    tokens = caps[(i - start) * 5 + k]
                    n_words += len(tokens)
                    raw = " ".join(tokens).capitalize() + "."
                    sents.append({"tokens": tokens, "raw": raw, "imgid": i, "sentid": i * 5 + k})
                entries.append(json.dumps({
                    "filepath": folder, "sentids": [i * 5 + k for k in range(5)], "filename": filename,
                    "imgid": i, "split": splits[i], "sentences": sents, "cocoid": int(cocoids[i]),
                }))
                image_dir = root / folder if coco_file else root / "Images"
                if image_dir not in dirs:
                    image_dir.mkdir(exist_ok=True)
                    dirs.add(image_dir)
                (image_dir / filename).touch()
            f.write(("," if start else "") + ",".join(entries))
            progress.update(stop)
        f.write("]}")
    return {"file": name, "images": n, "captions": n * 5, "mean_words_per_caption": round(n_words / (n * 5), 2),
            "splits": sizes}


# ---------------------------------------------------------------- grid features


def real_grid_sample(path: Path, rows: int = 300) -> np.ndarray:
    """(rows x 49, 1280) float32 region vectors from the first `rows` images of a grid file."""
    import pyarrow.parquet as pq

    batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows, columns=["feature"]))
    col = batch.column(0)
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, CHANNELS)


def value_model(sample: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """(QUANTILES, CHANNELS) float16 table: value k of channel c = the (k+0.5)/256 quantile of
    channel c over the real sample's regions (the fallback: zeros + exponential values)."""
    probs = (np.arange(QUANTILES) + 0.5) / QUANTILES
    if sample is not None:
        table = np.quantile(sample, probs, axis=0)
        src = {"source": "real efficientnet_lite0 grids", "regions_sampled": int(len(sample)),
               "zero_fraction": round(float((sample == 0).mean()), 4), "mean": round(float(sample.mean()), 4),
               "std": round(float(sample.std()), 4), "max": round(float(sample.max()), 3),
               "nonzero_mean": round(float(sample[sample != 0].mean()), 4) if (sample != 0).any() else 0.0,
               "channels_always_zero": int(((sample == 0).all(axis=0)).sum())}
    else:
        nz = np.clip(-FALLBACK_NONZERO_MEAN * np.log1p(-np.clip((probs - FALLBACK_ZERO_FRACTION)
                                                                / (1 - FALLBACK_ZERO_FRACTION), 0, 1 - 1e-6)), 0, 6)
        table = np.repeat(np.where(probs < FALLBACK_ZERO_FRACTION, 0.0, nz)[:, None], CHANNELS, axis=1)
        src = {"source": f"fallback: {FALLBACK_ZERO_FRACTION:.0%} zeros, exponential non-zero values "
                         f"(mean {FALLBACK_NONZERO_MEAN}) clipped to 6"}
    return np.ascontiguousarray(table.astype(np.float16)), src


def write_grid_file(path: Path, image_ids: list[str], table: np.ndarray, seed: int) -> dict[str, Any]:
    """The feature file the extract_features stage would write for `image_ids` (grid, float16),
    generated one row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    schema = pa.schema(
        [("image_id", pa.string()), ("feature", pa.list_(pa.float16(), DIM))],
        metadata={"backbone": "efficientnet_lite0", "weights": "imagenet", "feature_dim": str(DIM),
                  "spatial": "grid", "regions": str(REGIONS), "channels": str(CHANNELS),
                  "synthetic": "benchmarks/coco_scale.py"},
    )
    from captioner.features.store import ROW_GROUP_BYTES

    rows_per_group = max(1, ROW_GROUP_BYTES // (DIM * 4))  # as write_features groups them
    channel = np.arange(CHANNELS, dtype=np.int32)
    flat = np.ascontiguousarray(table.T).reshape(-1)  # channel-major: index c * 256 + k
    stats = {"zero_fraction": 0.0, "mean": 0.0, "rows": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    progress = Progress(f"features ({path.name})", len(image_ids))
    start = time.perf_counter()
    with pq.ParquetWriter(tmp, schema) as writer:
        for a in range(0, len(image_ids), rows_per_group):
            ids = image_ids[a : a + rows_per_group]
            k = rng.integers(0, QUANTILES, size=(len(ids), REGIONS, CHANNELS), dtype=np.uint8)
            values = flat[channel * QUANTILES + k]  # (rows, 49, 1280) float16
            if a == 0:
                stats = {"zero_fraction": round(float((values == 0).mean()), 4),
                         "mean": round(float(values.astype(np.float32).mean()), 4), "rows": len(ids)}
            writer.write_table(pa.table({
                "image_id": pa.array(ids, pa.string()),
                "feature": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), DIM),
            }, schema=schema))
            progress.update(a + len(ids))
    os.replace(tmp, path)
    size = path.stat().st_size
    return {"path": str(path), "bytes": size, "gb": round(size / GB, 3), "images": len(image_ids),
            "bytes_per_image": round(size / max(len(image_ids), 1)), "rows_per_group": rows_per_group,
            "seconds": round(time.perf_counter() - start, 1), "first_group": stats}


# ---------------------------------------------------------------- stages as measured children

WRAPPER = r"""
import atexit, os, runpy, sys
def _hwm():
    with open("/proc/self/status") as f:
        kb = {l.split(":")[0]: l.split()[1] for l in f if l.startswith(("VmHWM", "VmRSS"))}
    with open(os.environ["BENCH_HWM_FILE"], "w") as f:
        f.write(kb.get("VmHWM", "0"))
atexit.register(_hwm)
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""


def run_stage(ws: Path, name: str, args: list[str], log_dir: Path) -> dict[str, Any]:
    """Run stages/<name>.py in workspace `ws` (cwd: its params.yaml, data/, metrics/); wall
    seconds and peak RSS (the process's VmHWM, and the RSS sum of its process tree sampled
    every 0.2 s: the evaluate stage's JVM counts) and CPU seconds (steadier on a shared machine)."""
    import psutil

    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    hwm_file = log_dir / f"{name}.hwm"
    hwm_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "BENCH_HWM_FILE": str(hwm_file),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-c", WRAPPER, str(REPO / "stages" / f"{name}.py"), *args]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT)
        tree_peak = 0
        try:
            parent = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            parent = None
        usage = None
        while usage is None:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:  # reaped here: CPU time of the stage (and its reaped children)
                usage, proc.returncode = ru, os.waitstatus_to_exitcode(status)
                break
            if parent is not None:
                try:
                    procs = [parent, *parent.children(recursive=True)]
                    total = 0
                    for p in procs:
                        try:
                            total += p.memory_info().rss
                        except psutil.Error:
                            pass
                    tree_peak = max(tree_peak, total)
                except psutil.Error:
                    pass
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{name} failed (exit {proc.returncode}) in {ws}; log {log}:\n{tail}")
    hwm = int(hwm_file.read_text() or 0) * 1024 if hwm_file.exists() else 0
    peak = max(hwm, tree_peak)
    print(f"  {name}: {seconds:.1f} s ({cpu:.1f} CPU s), peak RSS {peak / GB:.3f} GB (process {hwm / GB:.3f}, "
          f"tree sampled {tree_peak / GB:.3f}); log {log}", flush=True)
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_rss_gb": round(peak / GB, 3),
            "process_hwm_gb": round(hwm / GB, 3), "tree_sampled_peak_gb": round(tree_peak / GB, 3)}


def max_batches_supported() -> bool:
    from captioner.config.params import TrainParams

    return "max_batches" in TrainParams.model_fields


def workspace_params(data_root: Path, layout: str, weights: str, steps: int | None) -> dict[str, Any]:
    """The committed params.yaml + the attention preset; one attention model (float32), one
    epoch of `steps` batches (train.max_batches)."""
    from captioner.config.presets import committed_params  # not the workspace file, which experiments edit

    params = committed_params(REPO / "params.yaml")
    for section, values in (yaml.safe_load(ATTENTION_PRESET.read_text(encoding="utf-8")) or {}).items():
        params.setdefault(section, {}).update(values)
    params["data"].update({"root": str(data_root), "layout": layout})
    params["features"].update({"weights": weights, "spatial": "grid", "dtype": "float16"})
    params["train"].update({"epochs": 1, "ensemble": 1, "merge_members": 0, "precision": "float32"})
    if steps:
        params["train"]["max_batches"] = steps
    params["evaluate"]["split"] = "dev"
    return params


def write_params(ws: Path, params: dict[str, Any]) -> None:
    from captioner.config.params import Params

    Params.model_validate(params)  # fail here, naming the key, not in a stage
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def human_stub(ws: Path) -> Path:
    """A stand-in for the human_ceiling stage's JSON (the ceiling is not what is measured here)."""
    zeros = {k: 0.0 for k in ("bleu1", "bleu2", "bleu3", "bleu4")}
    stub = {"split": "dev", **zeros, "coco": {**zeros, "meteor": 0.0, "rouge_l": 0.0, "cider": 0.0},
            "diversity": {}, "rounds": 0, "images": 0, "references_per_round": 4,
            "note": "stub written by benchmarks/coco_scale.py: the human ceiling is not computed"}
    path = ws / "data" / "human" / "ceiling.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stub), encoding="utf-8")
    return path


def text_facts(ws: Path) -> dict[str, Any]:
    report = json.loads((ws / "data" / "text" / "report.json").read_text())
    return {"vocab_size": report["vocab_size"], "images": report["images"], "captions": report["captions"]}


def words_trained(ws: Path, params: dict[str, Any], run: dict[str, Any]) -> tuple[int, str]:
    """Predicted words in the batches trained: the train stage's own count when run.json has
    one; else, with train.max_batches, that many batches x the mean words per batch of the
    epoch's plan (batches are drawn in random order); else the whole split's words."""
    for key in ("words_trained", "train_words", "words"):
        if isinstance(run.get(key), int | float) and run[key] > 0:
            return int(run[key]), f"run.json {key}"
    with np.load(ws / "data" / "sequences_train" / "train.npz", allow_pickle=False) as d:
        ids = d["ids"]
    words = int((ids[:, 1:] != 0).sum())
    tp = params["train"]
    cap = int(tp.get("max_batches", 0) or 0)
    if not cap:
        return words * int(run.get("epochs_run", 1)), "all train words"
    buckets = (ids != 0).sum(axis=1) // int(tp["bucket_width"])
    n_batches = int(sum(math.ceil(c / int(tp["batch_size"])) for c in np.unique(buckets, return_counts=True)[1]))
    if cap >= n_batches:
        return words, "all train words (max_batches >= batches per epoch)"
    return round(words * cap / n_batches), f"estimate: {cap} of {n_batches} batches x mean words per batch"


def train_sequences(ws: Path) -> tuple[Path, int]:
    """data/sequences_train: the train split's sequences and those of the first TRAIN_DEV_IMAGES
    dev images, so that the validation pass inside the train stage (part of its timing) costs
    the same in every data set (COCO's dev split is 5x Flickr8k's)."""
    src, dst = ws / "data" / "sequences", ws / "data" / "sequences_train"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copyfile(src / "train.npz", dst / "train.npz")
    with np.load(src / "dev.npz", allow_pickle=False) as d:
        ids, image_ids = d["ids"], d["image_ids"]
    keep = np.isin(image_ids, np.unique(image_ids)[:TRAIN_DEV_IMAGES])
    with open(dst / "dev.npz", "wb") as f:
        np.savez(f, ids=ids[keep].astype(np.int32), image_ids=image_ids[keep])
    return dst, int(keep.sum())


def measure(ws: Path, features: Path, params: dict[str, Any], log_dir: Path, beams: tuple[int, ...],
            eval_max_length: int | None = None) -> dict[str, Any]:
    """train (one epoch of max_batches) and evaluate at each beam width, in workspace `ws`."""
    out: dict[str, Any] = {}
    write_params(ws, params)
    seq_dir, dev_captions = train_sequences(ws)
    train = run_stage(ws, "train", ["--features", str(features), "--text", "data/text", "--sequences",
                                    str(seq_dir), "--out", "data/model", "--live", "metrics/train"], log_dir)
    run = json.loads((ws / "metrics" / "train" / "run.json").read_text())
    words, how = words_trained(ws, params, run)
    train_s = float(run.get("train_seconds") or train["seconds"])
    out["train"] = {**train, "run": run, "dev_captions": dev_captions, "words": words, "words_how": how, "train_seconds": train_s,
                    "words_per_s": round(words / train_s, 1),
                    "max_batches": params["train"].get("max_batches", 0)}
    human = human_stub(ws)
    tiny = tiny_text(ws)
    for beam in beams:
        p = json.loads(json.dumps(params))
        p["evaluate"]["beam_width"] = beam
        if eval_max_length:
            p["evaluate"]["max_length"] = eval_max_length
        write_params(ws, p)
        runs = {}
        for name, text in (("", "data/text"), ("tiny", tiny)):
            if text is None:
                continue
            sub = f"/{name}" if name else ""
            ev = run_stage(ws, "evaluate", [
                "--features", str(features), "--text", str(text), "--model", "data/model", "--out", f"data/eval{sub}",
                "--metrics", f"metrics{sub}/eval.json", "--plot", f"metrics{sub}/bleu.json",
                "--coco-plot", f"metrics{sub}/coco.json", "--human", str(human),
                "--run-info", f"metrics{sub}/eval_run.json"], log_dir / f"beam{beam}{name}")
            info = json.loads((ws / f"metrics{sub}" / "eval_run.json").read_text())
            runs[name] = {
                **ev, "images": info["images"], "decode_seconds": info["decode_seconds"],
                "coco_seconds": info.get("coco_seconds"),
                "decode_ms_per_image": round(1000 * info["decode_seconds"] / info["images"], 3),
                "mean_caption_words": _caption_lengths(ws / f"data/eval{sub}" / "captions.parquet"),
                "decoding": info.get("decoding"),
            }
        full = runs[""]
        if "tiny" in runs:  # marginal cost: without model loading and tracing, which a 256-image run also pays
            t = runs["tiny"]
            full["tiny_run"] = t
            full["decode_ms_per_image_marginal"] = round(
                1000 * (full["decode_seconds"] - t["decode_seconds"]) / (full["images"] - t["images"]), 3)
        out[f"eval_beam{beam}"] = full
    write_params(ws, params)
    return out


def tiny_text(ws: Path) -> Path | None:
    """data/text_tiny: data/text with a dev split of its first TINY_EVAL_IMAGES images, to
    measure evaluate's fixed cost (model loading, tracing); None when dev is too small for it."""
    import pandas as pd

    src, dst = ws / "data" / "text", ws / "data" / "text_tiny"
    dev = pd.read_parquet(src / "dev.parquet")
    ids = sorted(dev["image_id"].unique())
    if len(ids) < TINY_EVAL_IMAGES + MIN_MARGINAL_IMAGES:
        return None
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "dev.parquet":
            os.symlink(f.resolve(), dst / f.name)
    dev[dev["image_id"].isin(set(ids[:TINY_EVAL_IMAGES]))].to_parquet(dst / "dev.parquet", index=False)
    return dst


def _caption_lengths(path: Path) -> float | None:
    import pandas as pd

    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError):
        return None
    for col in ("caption", "hypothesis", "generated"):
        if col in table:
            return round(float(table[col].astype(str).str.split().str.len().mean()), 2)
    return None


# ---------------------------------------------------------------- the data sets


def synthetic_workspace(ws: Path, sizes: dict[str, int], bigram: Bigram, table: np.ndarray, args, log_dir: Path,
                        steps: int | None, seed: int) -> dict[str, Any]:
    """A synthetic Karpathy-layout set in `ws`: JSON, clean_text, build_sequences, feature file."""
    import pandas as pd

    coco_file = coco_layout_supported()
    if not coco_file:
        print("  note: this checkout's readers do not know dataset_coco.json yet: writing the same entries "
              "as dataset_flickr8k.json (images in Images/), read by the existing Karpathy reader", flush=True)
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    t0 = time.perf_counter()
    data = write_karpathy(ws / "raw", sizes, bigram, seed, coco_file)
    data["seconds"] = round(time.perf_counter() - t0, 1)
    data["json_mb"] = round((ws / "raw" / data["file"]).stat().st_size / 1e6, 1)
    print(f"  {data['file']}: {data['images']:,} images, {data['captions']:,} captions, "
          f"{data['mean_words_per_caption']} words per caption, {data['json_mb']} MB, {data['seconds']} s", flush=True)
    params = workspace_params(ws / "raw", "auto", args.weights, steps)
    write_params(ws, params)
    out: dict[str, Any] = {"data": data}
    out["clean_text"] = run_stage(ws, "clean_text", ["--out", "data/text"], log_dir)
    out["build_sequences"] = run_stage(ws, "build_sequences", ["--text", "data/text", "--out", "data/sequences"], log_dir)
    out["text"] = text_facts(ws)
    ids = pd.read_parquet(ws / "data" / "text" / "images.parquet", columns=["image_id"])["image_id"].astype(str).tolist()
    features = ws / "data" / "features" / "efficientnet_lite0.parquet"
    out["features"] = write_grid_file(features, ids, table, seed + 1)
    print(f"  features: {out['features']['images']:,} images, {out['features']['gb']} GB "
          f"({out['features']['bytes_per_image']:,} B/image), {out['features']['seconds']} s", flush=True)
    return out | {"params": params, "features_path": features, "ws": ws}


def real_flickr_workspace(ws: Path, args, log_dir: Path, steps: int | None) -> dict[str, Any]:
    """The real data set of --data, grid features extracted once by the pipeline's stage (cached)."""
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    root = Path(args.data).resolve()
    params = workspace_params(root, "auto", args.weights, steps)
    write_params(ws, params)
    out: dict[str, Any] = {}
    out["clean_text"] = run_stage(ws, "clean_text", ["--out", "data/text"], log_dir)
    out["build_sequences"] = run_stage(ws, "build_sequences", ["--text", "data/text", "--out", "data/sequences"], log_dir)
    out["text"] = text_facts(ws)
    cached = common.cache_file(args.cache, root, "efficientnet_lite0-grid16", args.weights)
    features = ws / "data" / "features" / "efficientnet_lite0.parquet"
    features.parent.mkdir(parents=True, exist_ok=True)
    if not cached.exists():
        print(f"  extracting Flickr8k grid features with the pipeline's stage (cached in {cached})", flush=True)
        out["extract_features"] = run_stage(ws, "extract_features", ["--out", str(features)], log_dir)
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(features, cached)
    else:
        print(f"  grid features from the cache {cached}", flush=True)
        os.symlink(cached.resolve(), features)
    size = features.stat().st_size
    out["features"] = {"path": str(cached), "bytes": size, "gb": round(size / GB, 3)}
    return out | {"params": params, "features_path": features, "ws": ws}


# ---------------------------------------------------------------- main


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser("coco_scale", __doc__)
    ap.add_argument("--images", type=int, default=FULL, help="images in the synthetic COCO set (default %(default)s)")
    ap.add_argument("--steps", type=int, default=300,
                    help="training batches (train.max_batches, one epoch) in both runs (default %(default)s)")
    ap.add_argument("--compare", choices=("real", "synthetic", "none"), default=None,
                    help="the Flickr8k side: --data's real grid features (default), a synthetic Flickr8k-size "
                         "set, or none (default with --quick)")
    ap.add_argument("--keep", action="store_true", help="keep the workspaces (default: delete the feature files)")
    ap.add_argument("--work", default=str(common.WORK / "coco_scale"), help="workspace folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.images = min(args.images, 200)
        args.steps = min(args.steps, 2)
    compare = args.compare or ("none" if args.quick else "real")
    work = Path(args.work).resolve()
    log_dir = work / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    started = time.perf_counter()

    steps: int | None = args.steps
    if not max_batches_supported():
        if args.images > 20_000:
            raise SystemExit("coco_scale: this checkout has no train.max_batches (a fixed number of steps); "
                             "a full epoch at COCO size is hours: use --images <= 20000 until it lands")
        print("coco_scale: note: no train.max_batches in this checkout: training runs one whole epoch", flush=True)
        steps = None
    beams = (3,) if args.quick else (1, 3)

    from captioner.datasets.readers import load_dataset

    print(f"coco_scale: {args.images:,} images, {args.steps} training steps, compare: {compare}; work {work}", flush=True)
    ds = load_dataset(Path(args.data).resolve())
    train_caps = ds.captions.loc[ds.captions["split"] == "train", "caption"].tolist()
    bigram = Bigram(train_caps)
    print(f"coco_scale: bigram model of {bigram.source_captions:,} train captions of {args.data}, "
          f"{bigram.source_vocab:,} words", flush=True)

    part: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}, "compare": compare,
                            "bigram": {"captions": bigram.source_captions, "words": bigram.source_vocab}}
    part["args"]["steps_applied"] = steps

    # The Flickr8k side first: its real grid features give the value distribution to mimic.
    flickr: dict[str, Any] | None = None
    sample = None
    if compare == "real":
        print("\n## flickr8k (real grid features)", flush=True)
        flickr = real_flickr_workspace(work / "flickr8k", args, log_dir / "flickr8k", steps)
        sample = real_grid_sample(flickr["features_path"])
    else:
        cached = common.cache_file(args.cache, Path(args.data).resolve(), "efficientnet_lite0-grid16", "imagenet")
        if cached.exists():
            sample = real_grid_sample(cached)
    table, source = value_model(sample, np.random.default_rng(args.seed))
    part["value_model"] = source
    print(f"coco_scale: feature values: {json.dumps(source)}", flush=True)

    if compare == "synthetic":
        print("\n## flickr8k-size synthetic set", flush=True)
        flickr = synthetic_workspace(work / "flickr8k_synthetic", FLICKR_SPLITS, bigram, table, args,
                                     log_dir / "flickr8k_synthetic", steps, args.seed + 100)

    print(f"\n## coco size ({args.images:,} images)", flush=True)
    coco = synthetic_workspace(work / "coco", split_sizes(args.images, COCO_SPLITS), bigram, table, args,
                               log_dir / "coco", steps, args.seed)
    coco.update(measure(work / "coco", coco["features_path"], coco["params"], log_dir / "coco", beams,
                        5 if args.quick else None))
    if flickr is not None:
        print("\n## flickr8k: the same training and evaluation", flush=True)
        flickr.update(measure(flickr["ws"], flickr["features_path"], flickr["params"],
                              log_dir / "flickr8k", beams))

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items() if k != "params"}

    part["coco"] = strip(coco)
    if flickr is not None:
        part["flickr8k"] = strip(flickr)

    text_rss = max(coco["clean_text"]["peak_rss_gb"], coco["build_sequences"]["peak_rss_gb"])
    eval_rss = max(coco[f"eval_beam{b}"]["peak_rss_gb"] for b in beams)
    s: dict[str, Any] = {
        "coco_images": coco["data"]["images"],
        "coco_feature_file_gb": coco["features"]["gb"],
        "coco_text_peak_rss_gb": text_rss,
        "coco_clean_text_s": coco["clean_text"]["seconds"],
        "coco_build_sequences_s": coco["build_sequences"]["seconds"],
        "coco_vocab_size": coco["text"]["vocab_size"],
        "coco_train_peak_rss_gb": coco["train"]["peak_rss_gb"],
        "coco_train_words_per_s": coco["train"]["words_per_s"],
        "coco_eval_peak_rss_gb": eval_rss,
        "coco_eval_images": coco["eval_beam3"]["images"],
        "coco_eval_5000_beam3_s": coco["eval_beam3"]["decode_seconds"],
        "coco_eval_beam3_stage_s": coco["eval_beam3"]["seconds"],
    }
    if 1 in beams:
        s["coco_eval_5000_greedy_s"] = coco["eval_beam1"]["decode_seconds"]
    for b in beams:  # decoding cost follows the generated length
        s[f"coco_eval_beam{b}_mean_words"] = coco[f"eval_beam{b}"]["mean_caption_words"]
        if flickr is not None:
            s[f"flickr8k_eval_beam{b}_mean_words"] = flickr[f"eval_beam{b}"]["mean_caption_words"]
    for b in beams:
        s[f"coco_eval_beam{b}_ms_per_image_marginal"] = coco[f"eval_beam{b}"].get("decode_ms_per_image_marginal")
        if flickr is not None:
            s[f"flickr8k_eval_beam{b}_ms_per_image_marginal"] = flickr[f"eval_beam{b}"].get("decode_ms_per_image_marginal")
    if flickr is not None:
        s["flickr8k_vocab_size"] = flickr["text"]["vocab_size"]
        s["flickr8k_train_words_per_s"] = flickr["train"]["words_per_s"]
        s["flickr8k_train_peak_rss_gb"] = flickr["train"]["peak_rss_gb"]
        s["flickr8k_eval_peak_rss_gb"] = max(flickr[f"eval_beam{b}"]["peak_rss_gb"] for b in beams)
        # cost ratios coco / flickr8k: seconds per word (training), seconds per image (decoding)
        s["coco_train_cost_per_word_ratio"] = ratio(flickr["train"]["words_per_s"], coco["train"]["words_per_s"])
        # the same by the stage's CPU seconds (steadier when other work shares the machine; not a target)
        s["coco_train_cpu_cost_per_word_ratio"] = ratio(coco["train"]["cpu_seconds"] / coco["train"]["words"],
                                                        flickr["train"]["cpu_seconds"] / flickr["train"]["words"])
        for b in beams:  # marginal decoding ms per image (fixed cost removed); None if a dev split is < 456 images
            s[f"coco_eval_beam{b}_cost_per_image_ratio"] = ratio(
                coco[f"eval_beam{b}"].get("decode_ms_per_image_marginal"),
                flickr[f"eval_beam{b}"].get("decode_ms_per_image_marginal"))
    rss = {k: v for k, v in s.items() if k.endswith("peak_rss_gb") and k.startswith("coco_")}
    checks = {f"{k} <= {TARGET_RSS_GB:g}": v <= TARGET_RSS_GB for k, v in rss.items()}
    for k in [k for k in s if k.endswith("_ratio")]:
        if s[k] is not None:
            checks[f"{k} <= {TARGET_COST_RATIO:g}"] = s[k] <= TARGET_COST_RATIO
    s["coco_targets"] = {k: "met" if ok else "MISSED" for k, ok in checks.items()}
    s["coco_targets_met"] = all(checks.values())
    part["summary"] = s
    part["seconds"] = round(time.perf_counter() - started, 1)
    part["machine"] = common.machine()

    if not args.keep:
        for f in (coco["features_path"],):
            Path(f).unlink(missing_ok=True)
        if compare == "synthetic" and flickr is not None:
            Path(flickr["features_path"]).unlink(missing_ok=True)
        part["deleted"] = [str(coco["features_path"])]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(part, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\ncoco_scale: {part['seconds']:.0f} s; workspaces under {work} (logs {log_dir})"
          + ("" if args.keep else "; feature files deleted (--keep keeps them)"))
    for k, v in s.items():
        print(f"  {k:40s} {v}")
    print(f"-> {out}")
    return part


if __name__ == "__main__":
    main()
