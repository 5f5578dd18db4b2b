"""`captioner serve`: the HTTP API (FastAPI TestClient), limits and bad input as 4xx JSON, batching,
one real uvicorn process on 127.0.0.1, and the demo page driven by headless Chromium (Playwright)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captioner.config.decoding import DecodingConfig
from captioner.decoding.captioner import load_captioner
from captioner.model.folder import write_decoding
from captioner.app.serve import Batcher, ServeSettings, create_app
from tests.conftest import require
from tests.test_cli import EVALUATED, evaluate_like_the_pipeline, trained_tiny_model

CHROMIUM = os.environ.get("CAPTIONER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict[Path, str]]:
    """The trained tiny model with decoding.json (the evaluation's settings), and its photos."""
    model, photos = trained_tiny_model(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("serve") / "release"
    shutil.copytree(model, out)
    write_decoding(out, EVALUATED)
    return out, photos


@pytest.fixture(scope="module")
def cap(release):
    return load_captioner(release[0])


SMALL = ServeSettings(max_upload_bytes=200_000, max_pixels=1_000_000, max_batch=4, batch_wait_ms=5)


@pytest.fixture(scope="module")
def client(cap):
    with TestClient(create_app(cap, settings=SMALL), raise_server_exceptions=False) as c:
        yield c


def jpeg_bytes(size=(64, 48), colour=(200, 30, 30), noise: bool = False) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", size, colour)
    if noise:
        im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8))
    im.save(buf, "JPEG")
    return buf.getvalue()


def test_caption_multipart_and_raw_give_the_evaluation_captions(client, release) -> None:
    model, photos = release
    images = sorted(photos)[::3]
    expected = evaluate_like_the_pipeline(model, images, EVALUATED)
    got_form, got_raw = [], []
    for path in images:
        r = client.post("/caption", files={"image": (path.name, path.read_bytes(), "application/octet-stream")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) >= {"caption", "words", "score", "decoding", "timings_ms", "batch"}
        assert body["decoding"] == EVALUATED.as_dict() and body["score"] <= 0
        assert set(body["timings_ms"]) == {"read", "queue", "model", "total"}
        got_form.append(body["caption"])
        r = client.post("/caption", content=path.read_bytes(), headers={"content-type": "image/jpeg"})
        got_raw.append(r.json()["caption"])
    assert got_form == got_raw == expected


def test_health(client, release) -> None:
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == str(release[0]) and h["backbone"] == "efficientnet_lite0"
    assert h["decoding"] == EVALUATED.as_dict() and h["attention"] is False


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG", optimize=True)
    return buf.getvalue()


BAD = {  # name -> (body, status, error kind)
    "empty": (b"", 400, "empty"),
    "not an image": (b"hello, I am text, not a photo" * 10, 415, "not_an_image"),
    "truncated": ((j := jpeg_bytes((300, 200), noise=True))[: len(j) // 2], 422, "undecodable"),
    "too many pixels": (_png((1200, 1000)), 413, "too_many_pixels"),  # small file, 1.2 Mpx > 1 Mpx
    "too large": (os.urandom(300_000), 413, "too_large"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_a_4xx_json_error_naming_the_problem(client, name: str) -> None:
    body, status, kind = BAD[name]
    for r in (client.post("/caption", content=body),
              client.post("/caption", files={"image": ("x.jpg", body, "image/jpeg")})):
        assert r.status_code == status, r.text
        assert r.json()["error"] == kind and r.json()["detail"]
    assert client.get("/health").status_code == 200  # still serving


def test_form_without_an_image_and_unknown_routes_are_json_4xx(client) -> None:
    r = client.post("/caption", data={"note": "no file"}, files={"a": ("a.jpg", b"1"), "b": ("b.jpg", b"2")})
    assert r.status_code == 400 and r.json()["error"] == "no_image"
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"] == "http"
    r = client.post("/caption?attention=maybe", content=jpeg_bytes())
    assert r.status_code == 422 and "attention" in r.json()["detail"]


def test_a_failure_in_the_model_thread_is_a_500_json_and_the_service_goes_on(cap, monkeypatch) -> None:
    with TestClient(create_app(cap, settings=SMALL), raise_server_exceptions=False) as c:
        monkeypatch.setattr(type(cap), "features_of", lambda self, px: (_ for _ in ()).throw(RuntimeError("boom")))
        r = c.post("/caption", content=jpeg_bytes())
        assert r.status_code == 500 and r.json()["error"] == "internal"
        monkeypatch.undo()
        assert c.post("/caption", content=jpeg_bytes()).status_code == 200


def test_concurrent_requests_are_captioned_together_with_the_same_captions(cap, release) -> None:
    model, photos = release
    images = sorted(photos)[:6]
    from captioner.features.images import read_image

    pixels = [read_image(p, cap.backbone.input_size).pixels for p in images]
    alone = Batcher(cap, EVALUATED, max_batch=1, wait_ms=0, max_queue=64)
    together = Batcher(cap, EVALUATED, max_batch=8, wait_ms=300, max_queue=64)
    try:
        one = [alone.submit(px, False).result(60)[0] for px in pixels]
        futures = [together.submit(px, False) for px in pixels]
        many = [f.result(60) for f in futures]
    finally:
        alone.close()
        together.close()
    assert [r[3] for r in many] == [6] * 6 and together.batches == 1  # one batch of 6
    assert [" ".join(c.words) for c in one] == [" ".join(r[0].words) for r in many]
    assert [" ".join(c.words) for c in one] == evaluate_like_the_pipeline(model, images, EVALUATED)


def test_a_full_queue_is_a_503(cap) -> None:
    b = Batcher(cap, EVALUATED, max_batch=1, wait_ms=0, max_queue=1)
    try:
        px = np.zeros((cap.backbone.input_size,) * 2 + (3,), np.uint8)
        from captioner.app.serve import BadInput

        with pytest.raises(BadInput) as e:
            for _ in range(50):
                b.submit(px, False)
        assert e.value.status == 503
    finally:
        b.close()


# ---------------------------------------------------------------- real servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become healthy in {timeout} s")


@pytest.fixture(scope="module")
def served(release):
    """`captioner serve` in its own process (real uvicorn) on a free port of 127.0.0.1."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner.app.cli", "serve", "--model", str(release[0]), "--port", str(port),
         "--max-upload-mb", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_real_uvicorn_process(served, release) -> None:
    model, photos = release
    images = sorted(photos)[1::5]
    expected = evaluate_like_the_pipeline(model, images, EVALUATED)

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served, timeout=60) as c:
            good = [c.post("/caption", files={"image": (p.name, p.read_bytes())}) for p in images]
            bad = [c.post("/caption", content=BAD["truncated"][0]), c.post("/caption", content=b"x" * 1_100_000)]
            return await asyncio.gather(*good, *bad)

    rs = asyncio.run(all_at_once())
    assert [r.json()["caption"] for r in rs[: len(images)]] == expected
    assert [(r.status_code, r.json()["error"]) for r in rs[len(images):]] == [(422, "undecodable"), (413, "too_large")]
    assert httpx.get(f"{served}/health").json()["decoding"] == EVALUATED.as_dict()


@pytest.fixture(scope="module")
def attention_served(tmp_path_factory):
    """An attention model served by uvicorn in a thread of this process (so that the page can show a map)."""
    import uvicorn

    from captioner.runtime.io import write_json
    from captioner.model.build import build_attention_model
    from captioner.datasets.text import build_vocabulary, save_vocabulary
    from tests.test_cli import CAPTIONS

    out = tmp_path_factory.mktemp("attention-serve")
    vocab = build_vocabulary(CAPTIONS, 1)
    build_attention_model(len(vocab), 49, 1280, 8, 8, 8, 0.0, 1.0).save(out / "model.keras")
    save_vocabulary(out / "vocab.json", vocab)
    write_json(out / "meta.json", {"backbone": "efficientnet_lite0", "weights": "imagenet", "spatial": "grid",
                                   "feature_dim": 49 * 1280, "vocab_size": len(vocab), "kind": "attention"})
    write_decoding(out, DecodingConfig(beam_width=2, max_length=5))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load_captioner(out)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def test_demo_page_in_a_real_browser(served, attention_served, release, tmp_path: Path) -> None:
    require(Path(CHROMIUM).exists(), f"Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    model, photos = release
    photo = sorted(photos)[7]
    api = httpx.post(f"{served}/caption", content=photo.read_bytes(), timeout=60).json()["caption"]
    shots = Path(os.environ.get("CAPTIONER_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            page.goto(served + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('beam 3')")
            page.set_input_files("#file", str(photo))
            page.click("#submit")
            page.wait_for_function("document.getElementById('caption').textContent.length > 0", timeout=60_000)
            assert page.text_content("#caption") == api
            assert page.text_content("#error") == ""
            assert not page.is_visible("#attention")  # a merge model: no map
            page.screenshot(path=str(shots / "demo-merge.png"), full_page=True)

            bad = tmp_path / "notes.jpg"
            bad.write_text("not a photo")
            page.set_input_files("#file", str(bad))
            page.click("#submit")
            page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=60_000)
            assert page.text_content("#error").startswith("415: not a recognised image format")
            assert page.text_content("#caption") == ""

            page.goto(attention_served + "/")
            page.set_input_files("#file", str(photo))
            page.click("#submit")
            page.wait_for_function("document.getElementById('caption').textContent.length > 0", timeout=60_000)
            page.wait_for_function("document.getElementById('attention').naturalWidth > 0")
            assert page.is_visible("#attention")
            page.screenshot(path=str(shots / "demo-attention.png"), full_page=True)
        finally:
            browser.close()
    assert (shots / "demo-merge.png").stat().st_size > 0


@pytest.mark.slow
def test_serve_load_benchmark_quick(tmp_path: Path) -> None:
    """benchmarks/serve_load.py --quick: the keys make bench needs, no 5xx, every bad upload a 4xx."""
    from benchmarks import serve_load

    part = serve_load.main(["--quick", "--weights", "none", "--data", str(tmp_path / "none"), "--no-unbatched",
                            "--out", str(tmp_path / "serve_load.json"), "--seconds", "3", "--requests", "15",
                            "--model", str(tmp_path / "no-model"), "--cache", str(tmp_path / "cache")])
    s = part["summary"]
    assert s["serve_5xx"] == 0 and s["serve_bad_4xx_fraction"] == 1.0
    assert s["serve_rps"] > 0 and 0 < s["serve_p50_ms"] <= s["serve_p99_ms"]
    run = part["runs"]["batch8"]
    assert {k for k in run["by_kind"] if k != "good"} == set(serve_load.BAD_KINDS)
    assert run["by_kind"]["good"] == {"200": run["captions"]}
    assert json.loads((tmp_path / "serve_load.json").read_text())["summary"] == s
