"""Figure: `captioner serve` under load, on 127.0.0.1 only.

A `captioner serve` process is started on a free local port; `--clients` concurrent clients
(asyncio + httpx, in this process) post images for `--seconds` or `--requests` requests,
whichever ends first. Four in five requests carry a good image; the others a bad upload in
turn: truncated JPEG, not an image, huge (too many pixels), too large (bytes) and empty. Good
images: `--data`'s photos (Flickr8k's, 0.05 MP: size class "small"; drawn ones when it has none)
and, with `--mix` (the default), generated uploads of the kinds people send
(benchmarks/photos.py): 12 MP phone JPEGs stored sideways with an EXIF orientation ("camera"),
a 3:1 panorama, a grey JPEG, a 16-bit grey PNG and a transparent PNG ("medium"), each sent as
often as four small photos. Measured: successful captions per second, p50/p99 latency of good
requests overall and by size class, responses by status and problem kind, and the server's
memory (RSS) over the run. Runs: requests batched (`--max-batch`, the service default) and one
at a time (`--max-batch 1`), to see whether batching pays; `--batch-endpoint`: 8 images per
POST /captions; `--soak SECONDS`: one long batched run whose RSS after warm-up (the first
minute) and at the end give the memory growth, with the RSS every 30 s.

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
MIX_WEIGHT = 4  # each generated upload is sent as often as this many small photos
PRESET_VOCAB = 2533


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def good_images(data: str, n: int, tmp: Path, mix: bool = False) -> list[tuple[str, bytes]]:
    """(size class, bytes) of up to `n` photos of the data set, or drawn ones when it has none;
    with `mix`, the generated uploads of benchmarks/photos.py too (MIX_WEIGHT times each)."""
    from benchmarks.photos import photo_mix, size_class

    small = _data_images(data, n)
    out = [("small", b) for b in small]
    if mix:
        import numpy as np
        from PIL import Image

        bases = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in small[:6]]
        for data_ in photo_mix(seed=0, bases=bases).values():
            with Image.open(io.BytesIO(data_)) as im:
                out += [(size_class(*im.size), data_)] * MIX_WEIGHT
    return out


def _data_images(data: str, n: int) -> list[bytes]:
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

    EVERY = 0.25

    def __init__(self, pid: int, every: float = EVERY) -> None:
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


def _problem_kind(r) -> str:
    """The problem kind of an error response (the end of its `type`), or why there is none."""
    try:
        return str(r.json().get("type", "")).rsplit(":", 1)[-1] or "no_type"
    except ValueError:
        return "not_json"


async def _load(url: str, good: list[tuple[str, bytes]], bad: dict[str, bytes], clients: int, seconds: float,
                max_requests: int, per_request: int = 0) -> tuple[list[tuple[str, int, str, float, str]], float]:
    """(kind, status, problem kind, seconds, size class) per request, and the wall time of the
    run. One request in five is a bad upload, of each kind in turn; the run lasts `seconds`, but
    at least until every bad kind was sent once (and never past `max_requests`). With
    `per_request` > 0, every request is a POST /captions of that many good images (class "batch")."""
    import httpx
    import numpy as np

    results: list[tuple[str, int, str, float, str]] = []
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + seconds
    order = np.random.default_rng(0).permutation(len(good))  # the classes interleaved

    async def client(c: httpx.AsyncClient) -> None:
        for i in counter:
            if per_request:
                if time.perf_counter() > deadline:
                    return
                parts = [("image", (f"{j}.img", good[order[(i * per_request + j) % len(good)]][1]))
                         for j in range(per_request)]
                t0 = time.perf_counter()
                try:
                    r = await c.post("/captions", files=parts)
                    ok = r.status_code == 200 and all("caption" in x for x in r.json()["results"])
                    status, err = (200 if ok else max(r.status_code, 500)), ("" if ok else _problem_kind(r))
                except httpx.HTTPError as e:
                    status, err = 0, f"transport:{type(e).__name__}"
                results.append(("good", status, err, time.perf_counter() - t0, "batch"))
                continue
            if time.perf_counter() > deadline and i >= 5 * len(BAD_KINDS):  # every bad kind sent once
                return
            kind = "good" if i % 5 else BAD_KINDS[(i // 5) % len(BAD_KINDS)]
            cls, body = good[order[i % len(good)]] if kind == "good" else ("bad", bad[kind])
            t0 = time.perf_counter()
            try:
                if i % 2:
                    r = await c.post("/caption", files={"image": ("photo.jpg", body, "image/jpeg")})
                else:
                    r = await c.post("/caption", content=body, headers={"content-type": "application/octet-stream"})
                status = r.status_code
                err = _problem_kind(r) if status >= 400 else ""
            except httpx.HTTPError as e:
                status, err = 0, f"transport:{type(e).__name__}"
            results.append((kind, status, err, time.perf_counter() - t0, cls))

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    return results, time.perf_counter() - start


def run_load(model: Path, data_images: list[tuple[str, bytes]], clients: int, seconds: float, max_requests: int,
             max_batch: int, max_upload_mb: float = 10.0, beam: int | None = None, per_request: int = 0,
             curve_every: float = 0.0) -> dict:
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
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - t0 > 300:
                raise SystemExit("serve_load: the server did not start in 300 s")
            time.sleep(0.2)
        startup_s = time.perf_counter() - t0
        bad = bad_uploads(data_images[0][1], int(max_upload_mb * 1024 * 1024))
        watch = MemoryWatch(proc.pid)
        results, wall = asyncio.run(_load(url, data_images, bad, clients, seconds, max_requests, per_request))
        samples = list(watch.samples)
        memory = watch.stop()
        health = httpx.get(f"{url}/readyz", timeout=10).json()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    good = [r for r in results if r[0] == "good"]
    ok = [r for r in good if r[1] == 200]
    lat = np.array([r[3] for r in ok]) * 1000 if ok else np.array([np.nan])
    classes = {}
    for cls in dict.fromkeys(r[4] for r in ok):
        ms = np.array([r[3] for r in ok if r[4] == cls]) * 1000
        classes[cls] = {"n": len(ms), "p50_ms": common.rnd(float(np.percentile(ms, 50))),
                        "p99_ms": common.rnd(float(np.percentile(ms, 99))), "max_ms": common.rnd(float(ms.max()))}
    bad_rows = [r for r in results if r[0] != "good"]
    by_status: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for kind, status, err, _, _ in results:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        key = f"{status} {err}".strip()
        by_kind.setdefault(kind, {})[key] = by_kind.setdefault(kind, {}).get(key, 0) + 1
    b = health.get("batching", {})
    images = len(ok) * (per_request or 1)
    out = {
        "max_batch": max_batch, "clients": clients, "requests": len(results), "wall_s": round(wall, 2),
        "images_per_request": per_request or 1, "by_class": classes,
        "startup_s": round(startup_s, 1), "captions": images, "rps": common.rnd(images / wall),
        "requests_per_s": common.rnd(len(results) / wall),
        "p50_ms": common.rnd(float(np.percentile(lat, 50))), "p99_ms": common.rnd(float(np.percentile(lat, 99))),
        "max_ms": common.rnd(float(np.max(lat))),
        "status_5xx": sum(1 for r in results if r[1] >= 500), "transport_errors": sum(1 for r in results if r[1] == 0),
        "good_not_200": len(good) - len(ok),
        "bad_4xx_fraction": round(sum(1 for r in bad_rows if 400 <= r[1] < 500) / len(bad_rows), 4) if bad_rows else None,
        "by_status": by_status, "by_kind": by_kind, "memory": memory,
        "mean_batch": round(b["images"] / b["batches"], 2) if b.get("batches") else None,
    }
    if curve_every:  # the soak: RSS after warm-up (the first minute) and at the end, a point every curve_every s
        step = max(1, int(curve_every / MemoryWatch.EVERY))
        warm = samples[min(len(samples) - 1, int(60 / MemoryWatch.EVERY))] if samples else 0.0
        out["soak"] = {"rss_after_warmup_mb": round(warm, 1), "rss_end_mb": round(samples[-1], 1) if samples else 0.0,
                       "growth_pct": round(100 * (samples[-1] / warm - 1), 2) if samples and warm else None,
                       "rss_curve_mb": [round(x, 1) for x in samples[::step]], "curve_every_s": curve_every}
    return out


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
    ap.add_argument("--mix", action=argparse.BooleanOptionalAction, default=True,
                    help="add generated camera-size and odd uploads to the small photos (quick: off)")
    ap.add_argument("--batch-endpoint", type=int, default=8, metavar="N",
                    help="also a run of POST /captions with N images each (0: none; quick: 0)")
    ap.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                    help="also a soak run this long (e.g. 600), RSS growth after warm-up")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.requests, args.images, args.mix, args.batch_endpoint = 4.0, 30, 4, False, 0

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
        images = good_images(args.data, args.images, Path(tmp), mix=args.mix)
    what += f", served at beam {args.beam}" if args.beam else ", served with its decoding settings"
    print(f"serve_load: {what}; {args.clients} clients, {args.seconds:g} s or {args.requests} requests per run")
    runs = {}
    for batch in dict.fromkeys((args.max_batch, 1) if args.unbatched else (args.max_batch,)):
        runs[f"batch{batch}"] = run_load(Path(model), images, args.clients, args.seconds, args.requests, batch,
                                         beam=args.beam)
        _print_run(f"max_batch {batch}", runs[f"batch{batch}"])
    if args.batch_endpoint:
        runs["captions_endpoint"] = run_load(Path(model), images, args.clients, args.seconds, args.requests,
                                             args.max_batch, beam=args.beam, per_request=args.batch_endpoint)
        _print_run(f"POST /captions x{args.batch_endpoint}", runs["captions_endpoint"])
    if args.soak:
        runs["soak"] = run_load(Path(model), images, args.clients, args.soak, 10**9, args.max_batch, beam=args.beam,
                                curve_every=30.0)
        _print_run(f"soak {args.soak:g} s", runs["soak"])
        print(f"  soak RSS after warm-up {runs['soak']['soak']['rss_after_warmup_mb']} MB, end "
              f"{runs['soak']['soak']['rss_end_mb']} MB ({runs['soak']['soak']['growth_pct']:+}%)")
    head = runs[f"batch{args.max_batch}"]
    part = {
        "summary": {
            "serve_rps": head["rps"], "serve_p50_ms": head["p50_ms"], "serve_p99_ms": head["p99_ms"],
            "serve_5xx": sum(r["status_5xx"] for r in runs.values()),
            "serve_bad_4xx_fraction": min(r["bad_4xx_fraction"] for r in runs.values() if r["bad_4xx_fraction"] is not None),
            "serve_unbatched_rps": runs["batch1"]["rps"] if "batch1" in runs else None, "serve_rss_peak_mb": head["memory"]["rss_peak_mb"],
            "serve_camera_p99_ms": head["by_class"].get("camera", {}).get("p99_ms"),
            "serve_soak_rss_growth_pct": runs["soak"]["soak"]["growth_pct"] if "soak" in runs else None,
        },
        "model": what, "runs": runs, "machine": info, "quick": args.quick,
    }
    common.write_part(args.out, part)
    common.report("serve under load", part["summary"])
    return part


def _print_run(name: str, r: dict) -> None:
    classes = ", ".join(f"{c} p50/p99 {v['p50_ms']}/{v['p99_ms']} ms (n {v['n']})" for c, v in r["by_class"].items())
    print(f"  {name}: {r['rps']} captions/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, 5xx {r['status_5xx']}, "
          f"bad 4xx {'-' if r['bad_4xx_fraction'] is None else format(r['bad_4xx_fraction'], '.0%')}, mean batch {r['mean_batch']}, RSS peak {r['memory']['rss_peak_mb']} MB; "
          f"{classes}")


if __name__ == "__main__":
    main()
