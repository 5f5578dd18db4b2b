"""Figure: `captioner serve` under load, on 127.0.0.1 only.

A `captioner serve` process is started on a free local port; `--clients` concurrent clients
(asyncio + httpx, in this process) post images for `--seconds` or `--requests` requests,
whichever ends first. Four in five requests carry a good photo (from `--data`'s images; drawn
ones when it has none); the others a bad upload in turn: truncated JPEG, not an image, huge
(too many pixels), too large (bytes) and empty. Measured: successful captions per second,
p50/p99 latency of good requests, responses by status and error kind, and the server's
memory (RSS) over the run. Run twice: requests batched (`--max-batch`, the service default)
and one at a time (`--max-batch 1`), to see whether batching pays.

The model: `--model DIR` (or $CAPTIONER_MODEL / data/release / data/model when they hold a
model); without one, a stand-in of the Flickr8k merge preset's shape (train.ensemble
untrained merge members, vocabulary 2,533 words, EfficientNet-Lite0 features) decoded at beam
3 with captions cut at 12 words (about a real caption's length; untrained members never end
one). Its speed is the trained ensemble's, its captions are noise.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

BAD_KINDS = ("truncated", "not_an_image", "huge_pixels", "too_large", "empty")
PRESET_VOCAB = 2533


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def good_images(data: str, n: int, tmp: Path) -> list[bytes]:
    """Up to `n` photos of the data set (JPEG bytes), or drawn ones when it has none."""
    import numpy as np
    from PIL import Image

    folder = Path(data) / "Flicker8k_Dataset"
    files = sorted(folder.glob("*.jpg"))[:n] if folder.is_dir() else sorted(Path(data).rglob("*.jpg"))[:n]
    if files:
        return [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def bad_uploads(good: bytes, max_upload: int) -> dict[str, bytes]:
    """One upload of each bad kind."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, "PNG")  # 81 Mpx in ~80 kB: over the 40 Mpx limit
    return {
        "truncated": good[: len(good) // 2],
        "not_an_image": b"this is a text file, not a photo\n" * 20,
        "huge_pixels": buf.getvalue(),
        "too_large": os.urandom(max_upload + 1),
        "empty": b"",
    }


def stand_in_model(folder: Path, params, weights: str) -> Path:
    """A model folder of train.ensemble untrained merge members of the preset's shape, whose
    decoding settings are beam 3 and 12 words at most."""
    import keras

    from captioner.config.decoding import DecodingConfig
    from captioner.datasets.text import build_vocabulary
    from captioner.model.build import build_member
    from captioner.model.folder import model_meta, save_model_folder, write_decoding

    vocab = build_vocabulary([f"startseq {' '.join(f'w{i}' for i in range(PRESET_VOCAB))} endseq"], 1)
    kinds = ["merge"] * params.train.ensemble
    models = []
    for m, kind in enumerate(kinds):
        keras.utils.set_random_seed(params.train.seed + m)
        models.append(build_member(kind, params.model, len(vocab), 1280))
    save_model_folder(folder, models, vocab, model_meta(
        backbone="efficientnet_lite0", weights=weights, feature_dim=1280, vocab_size=len(vocab), member_kinds=kinds,
        grid=False, best_epoch=0, best_val_loss=float("nan")))  # untrained: no epoch, no validation loss
    write_decoding(folder, DecodingConfig.of(params.evaluate).overridden(beam_width=3, max_length=12))
    return folder


class MemoryWatch:
    """Samples a process's RSS every `every` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        import psutil

        self.proc, self.every, self.samples = psutil.Process(pid), every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.proc.memory_info().rss / 1e6)
            except Exception:  # noqa: BLE001 - the process ended
                return
            self._stop.wait(self.every)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        s = self.samples or [0.0]
        return {"rss_start_mb": round(s[0], 1), "rss_peak_mb": round(max(s), 1), "rss_end_mb": round(s[-1], 1)}


async def _load(url: str, good: list[bytes], bad: dict[str, bytes], clients: int, seconds: float,
                max_requests: int) -> tuple[list[tuple[str, int, str, float]], float]:
    """(kind, status, error kind, seconds) per request, and the wall time of the run. One request
    in five is a bad upload, of each kind in turn; the run lasts `seconds`, but at least until
    every bad kind was sent once (and never past `max_requests`)."""
    import httpx

    results: list[tuple[str, int, str, float]] = []
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() > deadline and i >= 5 * len(BAD_KINDS):  # every bad kind sent once
                return
            kind = "good" if i % 5 else BAD_KINDS[(i // 5) % len(BAD_KINDS)]
            body = good[i % len(good)] if kind == "good" else bad[kind]
            t0 = time.perf_counter()
            try:
                if i % 2:
                    r = await c.post("/caption", files={"image": ("photo.jpg", body, "image/jpeg")})
                else:
                    r = await c.post("/caption", content=body, headers={"content-type": "application/octet-stream"})
                status = r.status_code
                try:
                    err = r.json().get("error", "") if status >= 400 else ""
                except ValueError:
                    err = "not_json"
            except httpx.HTTPError as e:
                status, err = 0, f"transport:{type(e).__name__}"
            results.append((kind, status, err, time.perf_counter() - t0))

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    return results, time.perf_counter() - start


def run_load(model: Path, data_images: list[bytes], clients: int, seconds: float, max_requests: int,
             max_batch: int, max_upload_mb: float = 10.0, beam: int | None = None) -> dict:
    """Start `captioner serve`, load it, stop it; the figures of one run."""
    import httpx
    import numpy as np

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "captioner.app.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", str(max_batch), "--max-upload-mb", str(max_upload_mb)]
    cmd += ["--beam", str(beam)] if beam else []
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=common.REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"serve_load: the server exited ({proc.returncode}): {log.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - t0 > 300:
                raise SystemExit("serve_load: the server did not start in 300 s")
            time.sleep(0.2)
        startup_s = time.perf_counter() - t0
        bad = bad_uploads(data_images[0], int(max_upload_mb * 1024 * 1024))
        watch = MemoryWatch(proc.pid)
        results, wall = asyncio.run(_load(url, data_images, bad, clients, seconds, max_requests))
        memory = watch.stop()
        health = httpx.get(f"{url}/health", timeout=10).json()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    good = [r for r in results if r[0] == "good"]
    ok = [r for r in good if r[1] == 200]
    lat = np.array([r[3] for r in ok]) * 1000 if ok else np.array([np.nan])
    bad_rows = [r for r in results if r[0] != "good"]
    by_status: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for kind, status, err, _ in results:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        key = f"{status} {err}".strip()
        by_kind.setdefault(kind, {})[key] = by_kind.setdefault(kind, {}).get(key, 0) + 1
    b = health.get("batching", {})
    return {
        "max_batch": max_batch, "clients": clients, "requests": len(results), "wall_s": round(wall, 2),
        "startup_s": round(startup_s, 1), "captions": len(ok), "rps": common.rnd(len(ok) / wall),
        "requests_per_s": common.rnd(len(results) / wall),
        "p50_ms": common.rnd(float(np.percentile(lat, 50))), "p99_ms": common.rnd(float(np.percentile(lat, 99))),
        "max_ms": common.rnd(float(np.max(lat))),
        "status_5xx": sum(1 for r in results if r[1] >= 500), "transport_errors": sum(1 for r in results if r[1] == 0),
        "good_not_200": len(good) - len(ok),
        "bad_4xx_fraction": round(sum(1 for r in bad_rows if 400 <= r[1] < 500) / max(len(bad_rows), 1), 4),
        "by_status": by_status, "by_kind": by_kind, "memory": memory,
        "mean_batch": round(b["images"] / b["batches"], 2) if b.get("batches") else None,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser("serve_load", __doc__)
    ap.add_argument("--model", default=None, help="model folder (default: a trained one if present, else a stand-in)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0, help="per run (quick: 4)")
    ap.add_argument("--requests", type=int, default=2000, help="per run at most (quick: 30)")
    ap.add_argument("--max-batch", type=int, default=8, help="the batched run's (the service default)")
    ap.add_argument("--images", type=int, default=40, help="distinct good photos (quick: 4)")
    ap.add_argument("--beam", type=int, default=3,
                    help="beam width the server decodes with (the target's: 3; 0 = the model folder's decoding settings)")
    ap.add_argument("--unbatched", action=argparse.BooleanOptionalAction, default=True,
                    help="also run with --max-batch 1 (does batching pay?)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.requests, args.images = 4.0, 30, 4

    from captioner.model.folder import ModelError, check_model_files, default_model_dir

    params = common.bench_params()
    info = common.machine()
    model = args.model or default_model_dir()
    try:
        check_model_files(model)
        what = f"trained model {model}"
    except ModelError:
        work = Path(args.cache).parent  # data/bench by default
        model = stand_in_model(work / f"serve-model-{args.weights}{'-quick' if args.quick else ''}", params,
                               args.weights)
        what = (f"stand-in: {params.train.ensemble} untrained merge members of the Flickr8k merge preset's "
                f"shape (vocab {PRESET_VOCAB}), beam 3, 12 words")
    with tempfile.TemporaryDirectory() as tmp:
        images = good_images(args.data, args.images, Path(tmp))
    what += f", served at beam {args.beam}" if args.beam else ", served with its decoding settings"
    print(f"serve_load: {what}; {args.clients} clients, {args.seconds:g} s or {args.requests} requests per run")
    runs = {}
    for batch in dict.fromkeys((args.max_batch, 1) if args.unbatched else (args.max_batch,)):
        runs[f"batch{batch}"] = run_load(Path(model), images, args.clients, args.seconds, args.requests, batch,
                                         beam=args.beam)
        r = runs[f"batch{batch}"]
        print(f"  max_batch {batch}: {r['rps']} captions/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
              f"5xx {r['status_5xx']}, mean batch {r['mean_batch']}, RSS peak {r['memory']['rss_peak_mb']} MB")
    head = runs[f"batch{args.max_batch}"]
    part = {
        "summary": {
            "serve_rps": head["rps"], "serve_p50_ms": head["p50_ms"], "serve_p99_ms": head["p99_ms"],
            "serve_5xx": sum(r["status_5xx"] for r in runs.values()),
            "serve_bad_4xx_fraction": min(r["bad_4xx_fraction"] for r in runs.values()),
            "serve_unbatched_rps": runs["batch1"]["rps"] if "batch1" in runs else None, "serve_rss_peak_mb": head["memory"]["rss_peak_mb"],
        },
        "model": what, "runs": runs, "machine": info, "quick": args.quick,
    }
    common.write_part(args.out, part)
    common.report("serve under load", part["summary"])
    return part


if __name__ == "__main__":
    main()
