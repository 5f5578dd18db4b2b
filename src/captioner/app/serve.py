"""`captioner serve`: an HTTP captioning service (FastAPI on uvicorn) with a demo page.

    POST /caption      an image as multipart form data (field `image`) or as the raw body
                       -> {"caption", "words", "score", "decoding", "timings_ms", "batch"}
                       ?attention=1 adds "attention_map" (a PNG data URL) for attention models
    GET  /health       -> {"status": "ok", "model", "backbone", "attention", "decoding", ...}
    GET  /             the demo page: upload a photo, see its caption (and attention map)

The model is loaded once. Images are decoded in worker threads, exactly as `captioner
caption` decodes files (`captioner.features.images.read_image`), and every TensorFlow call runs on one
model thread, off the event loop; concurrent requests waiting for it are captioned together
(up to `max_batch`, waiting at most `batch_wait_ms` for company). Bad input is a 4xx JSON
error {"error": kind, "detail": message}: 400 empty, 413 upload too large or too many pixels,
415 not an image, 422 an image that cannot be decoded (truncated...), 503 when `max_queue`
requests are already waiting. An unexpected failure is a 500 JSON error, never a crash.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from captioner import __version__
from captioner.config.decoding import DecodingConfig
from captioner.decoding.captioner import Captioner, load_captioner

if TYPE_CHECKING:
    from captioner.decoding.search import Caption

__all__ = [
    "MULTIPART_SLACK", "BadInput", "Batcher", "ServeSettings", "create_app", "error_response",
    "read_upload", "run",
]

MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around the file


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of the service."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # stored width x height, checked before decoding
    max_batch: int = 8  # 1: no batching
    batch_wait_ms: float = 2.0
    max_queue: int = 64

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_pixels < 1 or self.max_batch < 1 or self.max_queue < 1:
            raise ValueError(f"serve limits must be positive: {self}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")


class BadInput(Exception):
    """A request the service refuses: HTTP status, a short kind and a message naming the problem."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


def error_response(status: int, kind: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status)


def read_upload(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Upload bytes -> (size, size, 3) uint8 RGB, decoded exactly as the CLI decodes a file.

    Raises BadInput: empty (400), not an image (415), more than `max_pixels` (413, checked on
    the header, before decoding), undecodable or truncated (422).
    """
    from captioner.features.images import ImageError, read_image

    if not data:
        raise BadInput(400, "empty", "the upload is empty: send an image file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h, fmt = im.width, im.height, im.format
    except Image.DecompressionBombError:
        raise BadInput(413, "too_many_pixels", f"the image has too many pixels (limit {max_pixels:,})") from None
    except Exception:  # noqa: BLE001 - PIL raises many kinds on hostile headers
        raise BadInput(415, "not_an_image", "not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
    if w * h > max_pixels:
        raise BadInput(413, "too_many_pixels", f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}")
    # The same decoder as `captioner caption` (EXIF, modes, JPEG draft) reads a file: write one.
    with tempfile.NamedTemporaryFile(suffix=".upload", prefix="captioner-") as f:
        f.write(data)
        f.flush()
        try:
            return read_image(f.name, size).pixels
        except ImageError as e:
            raise BadInput(422, "undecodable", f"{fmt} image cannot be decoded: {e.problem}") from None
        except Exception as e:  # noqa: BLE001 - a decoder bug on a hostile file is still the file's fault
            raise BadInput(422, "undecodable", f"{fmt} image cannot be decoded ({type(e).__name__})") from None


@dataclass
class _Job:
    pixels: np.ndarray
    attention: bool
    future: concurrent.futures.Future
    queued: float


class Batcher:
    """One model thread: takes waiting jobs in batches and runs CNN + decoding on them."""

    def __init__(self, cap: Captioner, config: DecodingConfig, max_batch: int, wait_ms: float, max_queue: int) -> None:
        self.cap, self.config = cap, config
        self.max_batch, self.wait, self.max_queue = max_batch, wait_ms / 1000.0, max_queue
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="captioner-model", daemon=True)
        self._thread.start()
        self.batches = self.images = 0

    def submit(self, pixels: np.ndarray, attention: bool) -> concurrent.futures.Future:
        if self._q.qsize() >= self.max_queue:
            raise BadInput(503, "busy", f"{self.max_queue} requests are already waiting; retry shortly")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._q.put(_Job(pixels, attention, fut, time.perf_counter()))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)

    def _take(self) -> list[_Job] | None:
        first = self._q.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.perf_counter() + self.wait
        while len(jobs) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._q.put(None)  # close after this batch
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            start = time.perf_counter()
            try:
                attention = self.cap.attends and any(j.attention for j in jobs)
                feats = self.cap.features_of(np.stack([j.pixels for j in jobs]))
                captions = self.cap.caption_features(feats, self.config, len(jobs), attention=attention)
                seconds = time.perf_counter() - start
                self.batches, self.images = self.batches + 1, self.images + len(jobs)
                for j, c in zip(jobs, captions):
                    j.future.set_result((c, start - j.queued, seconds, len(jobs)))
            except Exception as e:  # noqa: BLE001 - reported to each waiting request as a 500
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)


def _attention_png(pixels: np.ndarray, c: Caption) -> str:
    from captioner.evaluation.attention_map import render_attention

    buf = io.BytesIO()
    render_attention(pixels, c.words, c.attention).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes without reading past it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadInput(413, "too_large", f"the upload is {int(declared):,} bytes; the limit is {limit:,}")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise BadInput(413, "too_large", f"the upload is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload_bytes(request: Request, settings: ServeSettings) -> bytes:
    """The image bytes of a multipart upload (field `image`, or the only file) or of a raw body."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return await _read_body(request, settings.max_upload_bytes)
    body = await _read_body(request, settings.max_upload_bytes + MULTIPART_SLACK)
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as e:  # noqa: BLE001 - malformed multipart
        raise BadInput(400, "bad_form", f"malformed multipart form data ({e})") from None
    try:
        files = [v for v in form.values() if hasattr(v, "read")]
        upload = form.get("image") if hasattr(form.get("image"), "read") else (files[0] if len(files) == 1 else None)
        if upload is None:
            raise BadInput(400, "no_image", "the form has no file field `image`")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > settings.max_upload_bytes:
        raise BadInput(413, "too_large", f"the upload is {len(data):,} bytes; the limit is {settings.max_upload_bytes:,}")
    return data


def create_app(cap: Captioner, config: DecodingConfig | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """The service for a loaded captioner (decoding with `config`, default the folder's)."""
    config = config or cap.decoding
    settings = settings or ServeSettings()
    state: dict[str, Batcher] = {}

    def batcher() -> Batcher:
        if "b" not in state:
            state["b"] = Batcher(cap, config, settings.max_batch, settings.batch_wait_ms, settings.max_queue)
        return state["b"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Trace the CNN and decoder before accepting requests: the first one is not the slow one.
        await asyncio.wrap_future(batcher().submit(np.zeros((cap.backbone.input_size,) * 2 + (3,), np.uint8),
                                                   cap.attends))
        b = state["b"]
        b.batches = b.images = 0
        yield
        state.pop("b").close()

    app = FastAPI(title="captioner", version=__version__, lifespan=lifespan)
    page = resources.files("captioner.app").joinpath("static/demo.html").read_text(encoding="utf-8")

    @app.exception_handler(BadInput)
    async def _bad_input(request: Request, e: BadInput) -> JSONResponse:
        return error_response(e.status, e.kind, e.detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, "http", str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg')}" for err in e.errors())
        return error_response(422, "bad_request", where)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        print(f"captioner serve: {request.method} {request.url.path}: {type(e).__name__}: {e}", file=sys.stderr)
        return error_response(500, "internal", f"{type(e).__name__}: the service could not caption this image")

    @app.get("/", response_class=HTMLResponse)
    async def demo() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, Any]:
        b = batcher()
        return {"status": "ok", "version": __version__, "model": cap.folder, "backbone": cap.backbone.name,
                "members": len(cap.models), "attention": cap.attends, "decoding": config.as_dict(),
                "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels},
                "batching": {"max_batch": settings.max_batch, "batch_wait_ms": settings.batch_wait_ms,
                             "batches": b.batches, "images": b.images}}

    @app.post("/caption")
    async def caption(request: Request, attention: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        data = await _upload_bytes(request, settings)
        pixels = await run_in_threadpool(read_upload, data, cap.backbone.input_size, settings.max_pixels)
        t1 = time.perf_counter()
        c, waited, model_s, batch = await asyncio.wrap_future(batcher().submit(pixels, attention))
        out: dict[str, Any] = {"caption": " ".join(c.words), "words": c.words, "score": round(c.logprob, 4),
                               "decoding": config.as_dict(), "batch": batch}
        if attention and c.attention is not None:
            out["attention_map"] = await run_in_threadpool(_attention_png, pixels, c)
        t2 = time.perf_counter()
        out["timings_ms"] = {"read": round(1000 * (t1 - t0), 1), "queue": round(1000 * waited, 1),
                             "model": round(1000 * model_s, 1), "total": round(1000 * (t2 - t0), 1)}
        return out

    return app


def run(model: str | os.PathLike[str], config: DecodingConfig, settings: ServeSettings, host: str, port: int) -> int:
    """Load `model` once and serve it with uvicorn until interrupted."""
    import uvicorn

    cap = load_captioner(model)
    print(f"captioner serve: {model} ({len(cap.models)} model(s), {cap.backbone.name}), decoding "
          f"{config.as_dict()} on http://{host}:{port}/", file=sys.stderr, flush=True)
    uvicorn.run(create_app(cap, config, settings), host=host, port=port, log_level="warning",
                limit_concurrency=max(64, 2 * settings.max_queue), timeout_graceful_shutdown=5)
    return 0
