"""`captioner serve`: an HTTP captioning service (FastAPI on uvicorn) with a demo page.

    POST /caption      one image: multipart form data (file field `image`) or the raw body
                       -> {"caption", "words", "score", "decoding", "timings_ms", "batch"}
                       ?attention=1 adds "attention_map" (a PNG data URL) for attention models
    POST /captions     several `image` parts -> {"results": [...]}, one entry per part in order:
                       the /caption body, or {"error": problem} for a bad part (the others go on)
    GET  /healthz      liveness: the process answers (never needs a key)
    GET  /readyz       readiness: model loaded and warmed, queue below its limit -> 200 and the
                       status (version, backbone, members, decoding, limits, counters; no file
                       paths), else 503 with Retry-After (never needs a key)
    GET  /metrics      Prometheus text: requests by route and status, latency, batch sizes, queue
    GET  /docs         the API (Swagger UI, served by the app itself: works offline); /openapi.json
    GET  /             the demo page: upload a photo, see its caption (and attention map)

The model is loaded once (in the background when `run` serves it: /healthz answers at once,
/readyz once the model is warm). Images are decoded in worker threads exactly as `captioner
caption` decodes files (`captioner.features.images.read_image`), and every TensorFlow call runs
on one model thread, off the event loop; requests waiting for it are captioned together (up to
`max_batch`, waiting at most `batch_wait_ms` for company). Every error is an RFC 9457 problem
(`application/problem+json`, captioner.app.problems): 400 empty or malformed, 401 no or unknown
key, 413 too large, too many pixels or images, 415 not an image, 422 undecodable, 503 busy or
not ready (with Retry-After); an unexpected failure is a 500 problem, never a crash.

With API keys (`api_keys`), every route but /healthz, /readyz, the demo page and the API docs
(static pages holding no data; the page asks for a key) needs `Authorization: Bearer <key>`,
compared in constant time. One access-log line per request (logger ``captioner.access``: method,
path, status, milliseconds, images; never image data). SIGTERM: uvicorn stops accepting, every
accepted request is answered (up to `drain_seconds`), then the model thread ends.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hmac
import io
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from captioner import __version__
from captioner.app.problems import MEDIA_TYPE, problem
from captioner.config.decoding import DecodingConfig
from captioner.decoding.captioner import Captioner, load_captioner

if TYPE_CHECKING:
    from captioner.decoding.search import Caption

__all__ = [
    "MULTIPART_SLACK", "PUBLIC_PATHS", "BadInput", "Batcher", "ServeSettings", "create_app", "error_response",
    "read_api_keys", "read_upload", "run",
]

MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around each file
PUBLIC_PATHS = ("/healthz", "/readyz", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json")
DOCS_ASSETS = "/docs-assets"  # Swagger UI's files, from the fastapi-offline package
access_log = logging.getLogger("captioner.access")
log = logging.getLogger("captioner.serve")


@dataclass(frozen=True)
class ServeSettings:
    """Limits, batching, keys and CORS of the service."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # stored width x height, checked before decoding
    max_batch: int = 8  # 1: no batching
    batch_wait_ms: float = 2.0
    max_queue: int = 64
    max_images: int = 16  # image parts in one POST /captions
    max_request_bytes: int = 64 * 1024 * 1024  # a POST /captions body
    retry_after_s: int = 2  # what a 503 asks the client to wait
    drain_seconds: float = 30.0  # SIGTERM: time given to accepted requests
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers

    def __post_init__(self) -> None:
        if min(self.max_upload_bytes, self.max_pixels, self.max_batch, self.max_queue, self.max_images,
               self.max_request_bytes, self.retry_after_s) < 1:
            raise ValueError(f"serve limits must be positive: {self}")
        if self.batch_wait_ms < 0 or self.drain_seconds < 0:
            raise ValueError(f"batch_wait_ms and drain_seconds must be >= 0: {self}")
        if any(not k or k != k.strip() for k in self.api_keys):
            raise ValueError("API keys must be non-empty and have no surrounding spaces")


def read_api_keys(env: str | None = None, path: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """API keys from `env` (comma-separated, e.g. $CAPTIONER_API_KEYS) and a file (one per line,
    `#` comments); ValueError naming the file if it cannot be read or holds none."""
    keys = [k.strip() for k in (env or "").split(",") if k.strip()]
    if path is not None:
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except OSError as e:
            raise ValueError(f"{path}: cannot read the API keys file ({e.strerror or e})") from None
        found = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not found:
            raise ValueError(f"{path}: no API keys in the file (one key a line)")
        keys += found
    return tuple(dict.fromkeys(keys))


class BadInput(Exception):
    """A request the service refuses: a problem kind (captioner.app.problems), a message naming
    the problem and, rarely, a status other than the kind's."""

    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail
        self.problem = problem(kind, detail, status)
        self.status = self.problem["status"]


def error_response(kind: str, detail: str, status: int | None = None, retry_after: int | None = None) -> JSONResponse:
    """A problem as `application/problem+json`; 503s carry Retry-After."""
    body = problem(kind, detail, status)
    headers = {"Retry-After": str(retry_after)} if retry_after and body["status"] == 503 else {}
    if body["status"] == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="captioner"'
    return JSONResponse(body, status_code=body["status"], media_type=MEDIA_TYPE, headers=headers)


def read_upload(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Upload bytes -> (size, size, 3) uint8 RGB, decoded exactly as the CLI decodes a file.

    Raises BadInput: empty (400), not an image (415), more than `max_pixels` (413, checked on
    the header, before decoding), undecodable or truncated (422).
    """
    from captioner.features.images import ImageError, read_image

    if not data:
        raise BadInput("empty", "the upload is empty: send an image file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h, fmt = im.width, im.height, im.format
    except Image.DecompressionBombError:
        raise BadInput("too_many_pixels", f"the image has too many pixels (limit {max_pixels:,})") from None
    except Exception:  # noqa: BLE001 - PIL raises many kinds on hostile headers
        raise BadInput("not_an_image", "not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
    if w * h > max_pixels:
        raise BadInput("too_many_pixels", f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}")
    # The same decoder as `captioner caption` (EXIF, modes, JPEG draft) reads a file: write one.
    with tempfile.NamedTemporaryFile(suffix=".upload", prefix="captioner-") as f:
        f.write(data)
        f.flush()
        try:
            return read_image(f.name, size).pixels
        except ImageError as e:
            raise BadInput("undecodable", f"{fmt} image cannot be decoded: {e.problem}") from None
        except Exception as e:  # noqa: BLE001 - a decoder bug on a hostile file is still the file's fault
            raise BadInput("undecodable", f"{fmt} image cannot be decoded ({type(e).__name__})") from None


@dataclass
class _Job:
    pixels: np.ndarray
    attention: bool
    future: concurrent.futures.Future
    queued: float


class Batcher:
    """One model thread: takes waiting jobs in batches and runs CNN + decoding on them.
    `on_batch(images)` is called after each batch (metrics)."""

    def __init__(self, cap: Captioner, config: DecodingConfig, max_batch: int, wait_ms: float, max_queue: int,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.cap, self.config = cap, config
        self.max_batch, self.wait, self.max_queue = max_batch, wait_ms / 1000.0, max_queue
        self.on_batch = on_batch
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="captioner-model", daemon=True)
        self._thread.start()
        self.batches = self.images = 0

    @property
    def depth(self) -> int:
        """Jobs waiting for the model thread."""
        return self._q.qsize()

    def submit(self, pixels: np.ndarray, attention: bool) -> concurrent.futures.Future:
        if self._q.qsize() >= self.max_queue:
            raise BadInput("busy", f"{self.max_queue} images are already waiting; retry shortly")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._q.put(_Job(pixels, attention, fut, time.perf_counter()))
        return fut

    def close(self) -> None:
        """End the model thread once the jobs already queued are done."""
        self._q.put(None)
        self._thread.join(timeout=60)

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
                if self.on_batch:
                    self.on_batch(len(jobs))
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
    """The request body, refusing (413) more than `limit` bytes without reading past it; a client
    that goes away mid-upload ends here (499), having cost its own bytes only."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadInput("too_large", f"the request is {int(declared):,} bytes; the limit is {limit:,}")
    chunks, n = [], 0
    try:
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise BadInput("too_large", f"the request is over the limit of {limit:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadInput("disconnected", f"the client went away after {n:,} bytes") from None
    return b"".join(chunks)


async def _form_files(request: Request, limit: int, max_files: int) -> list[tuple[str, str, bytes]]:
    """(field, filename, bytes) of every file part of a multipart body of at most `limit` bytes."""
    from starlette.formparsers import MultiPartException

    body = await _read_body(request, limit)
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_files, max_fields=16)
    except (MultiPartException, StarletteHTTPException) as e:  # Starlette wraps the first in the second
        message = str(getattr(e, "detail", None) or e)
        if message.startswith("Too many files"):
            raise BadInput("too_many_images", f"more than {max_files} files in one request") from None
        raise BadInput("bad_form", f"malformed multipart form data ({message})") from None
    except Exception as e:  # noqa: BLE001 - malformed multipart
        raise BadInput("bad_form", f"malformed multipart form data ({e})") from None
    try:
        return [(k, v.filename or "", await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
    finally:
        await form.close()


async def _upload_bytes(request: Request, settings: ServeSettings) -> bytes:
    """The image bytes of a multipart upload (field `image`, or the only file) or of a raw body."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _read_body(request, settings.max_upload_bytes)
    files = await _form_files(request, settings.max_upload_bytes + MULTIPART_SLACK, 4)
    named = [data for field, _, data in files if field == "image"]
    if not named and len(files) != 1:
        raise BadInput("no_image", "the form has no file field `image`")
    data = named[0] if named else files[0][2]
    if len(data) > settings.max_upload_bytes:
        raise BadInput("too_large", f"the upload is {len(data):,} bytes; the limit is {settings.max_upload_bytes:,}")
    return data


def _image_body(many: bool) -> dict[str, Any]:
    """The OpenAPI request body of /caption (one `image`, or a raw image body) and /captions (several)."""
    item = {"type": "string", "format": "binary"}
    image = {"type": "array", "items": item} if many else item
    what = "image files (repeat the field)" if many else "an image file (JPEG, PNG, WebP, GIF, BMP, TIFF)"
    content: dict[str, Any] = {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"], "properties": {"image": {**image, "description": what}}}}}
    if not many:
        content["image/*"] = {"schema": item}
    return {"requestBody": {"required": True, "content": content}}


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, depth: Callable[[], float]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("captioner_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("captioner_request_seconds", "Time to answer a request", ["route"],
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=self.registry)
        self.batch = Histogram("captioner_model_batch_images", "Images per model batch",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.images = Counter("captioner_images", "Images captioned", registry=self.registry)
        Gauge("captioner_queue_depth", "Images waiting for the model thread",
              registry=self.registry).set_function(depth)
        self.ready = Gauge("captioner_ready", "1 once the model is loaded and warm", registry=self.registry)

    def model_batch(self, images: int) -> None:
        self.batch.observe(images)
        self.images.inc(images)


def _authorized(header: str, keys: tuple[str, ...]) -> bool:
    """`Authorization: Bearer <key>` with one of `keys`, compared in constant time (every key tried)."""
    scheme, _, token = header.partition(" ")
    given = token.strip().encode()
    hit = False
    for key in keys:
        hit |= hmac.compare_digest(given, key.encode())
    return scheme.lower() == "bearer" and hit


def create_app(cap: Captioner | Callable[[], Captioner], config: DecodingConfig | None = None,
               settings: ServeSettings | None = None) -> FastAPI:
    """The service for a captioner (decoding with `config`, default the folder's). Given a loaded
    captioner, the app warms it before it starts serving; given a loader (what `run` does), it
    starts at once, loads and warms in the background, and /readyz says when it is ready."""
    from fastapi_offline import FastAPIOffline

    settings = settings or ServeSettings()
    state: dict[str, Any] = {"ready": False, "failed": None}

    def batcher() -> Batcher | None:
        return state.get("batcher")

    metrics = _Metrics(lambda: b.depth if (b := batcher()) else 0)

    def start() -> None:
        """Load (if need be), start the model thread, trace the CNN and decoder on one image."""
        try:
            c = cap if isinstance(cap, Captioner) else cap()
            conf = config or c.decoding
            b = Batcher(c, conf, settings.max_batch, settings.batch_wait_ms, settings.max_queue)
            b.submit(np.zeros((c.backbone.input_size,) * 2 + (3,), np.uint8), c.attends).result()
            b.batches = b.images = 0
            b.on_batch = metrics.model_batch  # the warm-up is not counted
            state.update(cap=c, config=conf, batcher=b, ready=True)
            metrics.ready.set(1)
            log.info("model ready: %s, %d member(s), %s", c.backbone.name, len(c.models), conf.as_dict())
        except Exception as e:  # noqa: BLE001 - /readyz reports it; the process stays up for probes
            state["failed"] = f"{type(e).__name__}: {e}"
            log.error("cannot load the model: %s", state["failed"])
            if isinstance(cap, Captioner):
                raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if isinstance(cap, Captioner):
            await run_in_threadpool(start)  # ready before the first request
        else:
            threading.Thread(target=start, name="captioner-load", daemon=True).start()
        yield
        state["ready"] = False
        if (b := state.pop("batcher", None)) is not None:
            await run_in_threadpool(b.close)

    app = FastAPIOffline(title="captioner", version=__version__, lifespan=lifespan, static_url=DOCS_ASSETS,
                         redoc_url=None, description="Image captioning: POST a photo, get an English sentence. "
                         "Errors are RFC 9457 problems (application/problem+json).")
    page = resources.files("captioner.app").joinpath("static/demo.html").read_text(encoding="utf-8")
    if settings.api_keys:  # declare the Bearer scheme: /docs gets an "Authorize" box
        plain_openapi = app.openapi

        def openapi() -> dict[str, Any]:
            if app.openapi_schema is None:
                schema = plain_openapi()
                schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path, operations in schema["paths"].items():
                    for op in operations.values() if path not in PUBLIC_PATHS else ():
                        op["security"] = [{"bearer": []}]
            return app.openapi_schema

        app.openapi = openapi  # type: ignore[method-assign]
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)

    @app.middleware("http")
    async def gate(request: Request, call_next: Callable) -> Response:
        """API keys, then the request; one access-log line and the metrics for every request."""
        t0 = time.perf_counter()
        path = request.url.path
        public = path in PUBLIC_PATHS or path.startswith(DOCS_ASSETS + "/") or request.method == "OPTIONS"
        if settings.api_keys and not public and not _authorized(request.headers.get("authorization", ""),
                                                                 settings.api_keys):
            response: Response = error_response("unauthorized", "send `Authorization: Bearer <key>` with a valid key")
        else:
            response = await call_next(request)
        seconds = time.perf_counter() - t0
        route = getattr(request.scope.get("route"), "path", None) or ("docs-assets" if path.startswith(DOCS_ASSETS)
                                                                      else "unmatched")
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        images = getattr(request.state, "images", None)
        access_log.info("%s %s %d %.1f ms%s", request.method, path, response.status_code, 1000 * seconds,
                        f" images={images}" if images is not None else "")
        return response

    @app.exception_handler(BadInput)
    async def _bad_input(request: Request, e: BadInput) -> JSONResponse:
        return error_response(e.kind, e.detail, e.status, settings.retry_after_s)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http")
        return error_response(kind, str(e.detail), e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg')}" for err in e.errors())
        return error_response("bad_request", where)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s: %s: %s", request.method, request.url.path, type(e).__name__, e)
        return error_response("internal", f"{type(e).__name__}: the service could not caption this image")

    def not_ready() -> str | None:
        """Why the service cannot caption yet (None: it can)."""
        if state["ready"] and batcher() is not None:
            return None
        return f"the model failed to load ({state['failed']})" if state["failed"] else "the model is loading"

    def ready_batcher() -> Batcher:
        if (why := not_ready()) is not None:
            raise BadInput("not_ready", why)
        return batcher()

    def status() -> dict[str, Any]:
        c, b = state.get("cap"), batcher()
        out: dict[str, Any] = {"status": "ready" if state["ready"] else ("failed" if state["failed"] else "loading"),
                               "version": __version__}
        if c is not None and b is not None:
            out.update({"backbone": c.backbone.name, "members": len(c.models), "attention": c.attends,
                        "dataset": c.dataset, "decoding": state["config"].as_dict(),
                        "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
                                   "max_images": settings.max_images, "max_request_bytes": settings.max_request_bytes},
                        "batching": {"max_batch": settings.max_batch, "batch_wait_ms": settings.batch_wait_ms,
                                     "batches": b.batches, "images": b.images, "queue": b.depth,
                                     "max_queue": settings.max_queue},
                        "auth": "bearer" if settings.api_keys else "none"})
        return out

    async def caption_one(pixels: np.ndarray, attention: bool, t0: float, t1: float) -> dict[str, Any]:
        b = ready_batcher()
        c, waited, model_s, batch = await asyncio.wrap_future(b.submit(pixels, attention))
        out: dict[str, Any] = {"caption": " ".join(c.words), "words": c.words, "score": round(c.logprob, 4),
                               "decoding": state["config"].as_dict(), "batch": batch}
        if attention and c.attention is not None:
            out["attention_map"] = await run_in_threadpool(_attention_png, pixels, c)
        t2 = time.perf_counter()
        out["timings_ms"] = {"read": round(1000 * (t1 - t0), 1), "queue": round(1000 * waited, 1),
                             "model": round(1000 * model_s, 1), "total": round(1000 * (t2 - t0), 1)}
        return out

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo() -> str:
        return page

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded and warm and the queue has room",
             responses={503: {"description": "loading, failed or busy (a problem; Retry-After)"}})
    async def readyz() -> Response:
        body = status()
        if (why := not_ready()) is not None:
            return error_response("not_ready", why, retry_after=settings.retry_after_s)
        b = batcher()
        if b.depth >= settings.max_queue:
            return error_response("busy", f"{b.depth} images are waiting (limit {settings.max_queue})",
                                  retry_after=settings.retry_after_s)
        return JSONResponse(body)

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/caption", summary="Caption one image", openapi_extra=_image_body(False))
    async def caption(request: Request, attention: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        request.state.images = 1
        ready_batcher()  # a 503 before reading an upload the model cannot take
        data = await _upload_bytes(request, settings)
        pixels = await run_in_threadpool(read_upload, data, state["cap"].backbone.input_size, settings.max_pixels)
        return await caption_one(pixels, attention, t0, time.perf_counter())

    @app.post("/captions", summary="Caption several images (repeat the `image` field)",
              openapi_extra=_image_body(True))
    async def captions(request: Request) -> dict[str, Any]:
        t0 = time.perf_counter()
        ready_batcher()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadInput("no_image", "send multipart/form-data with one `image` file field per image")
        files = await _form_files(request, settings.max_request_bytes, settings.max_images)
        parts = [(name, data) for field, name, data in files if field == "image"]
        if not parts:
            raise BadInput("no_image", "the form has no file field `image`")
        request.state.images = len(parts)
        size = state["cap"].backbone.input_size

        async def one(name: str, data: bytes) -> dict[str, Any]:
            try:
                if len(data) > settings.max_upload_bytes:
                    raise BadInput("too_large", f"the file is {len(data):,} bytes; the limit is "
                                                f"{settings.max_upload_bytes:,}")
                pixels = await run_in_threadpool(read_upload, data, size, settings.max_pixels)
                return {"filename": name, **await caption_one(pixels, False, t0, time.perf_counter())}
            except BadInput as e:
                return {"filename": name, "error": e.problem}

        return {"results": list(await asyncio.gather(*(one(n, d) for n, d in parts)))}

    return app


def run(model: str | os.PathLike[str], config: DecodingConfig, settings: ServeSettings, host: str, port: int,
        log_level: str = "info") -> int:
    """Serve `model` with uvicorn until SIGTERM or Ctrl-C; the model loads in the background."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"captioner serve: {model}, decoding {config.as_dict()} on http://{host}:{port}/ (API: /docs)",
          file=sys.stderr, flush=True)
    if settings.api_keys:
        print(f"captioner serve: {len(settings.api_keys)} API key(s): requests need `Authorization: Bearer <key>`",
              file=sys.stderr, flush=True)
    else:
        print(f"captioner serve: open, no API keys: anyone who reaches {host}:{port} can use it "
              "(set CAPTIONER_API_KEYS or --api-keys-file)", file=sys.stderr, flush=True)
    uvicorn.run(create_app(lambda: load_captioner(model), config, settings), host=host, port=port,
                log_level=log_level, access_log=False, limit_concurrency=max(64, 2 * settings.max_queue),
                timeout_graceful_shutdown=settings.drain_seconds)
    return 0
