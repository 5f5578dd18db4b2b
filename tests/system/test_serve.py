"""`captioner serve` as a real server: uvicorn processes on 127.0.0.1 answering concurrent
requests with the evaluation's captions; readiness during warm-up, API keys, batches, problem
responses, access logs, a client that hangs up mid-upload and SIGTERM with requests in flight;
the demo page and the offline API docs driven by headless Chromium (Playwright, no request
leaving 127.0.0.1); and the quick load benchmark."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from captioner.app.serve import ServeSettings, create_app
from captioner.config.decoding import DecodingConfig
from captioner.decoding.captioner import load_captioner
from captioner.model.folder import write_decoding
from tests.helpers.models import EVALUATED, evaluate_like_the_pipeline, release_folder
from tests.helpers.project import require



def truncated_jpeg() -> bytes:
    """The first half of a noisy 300x200 JPEG: what /caption must call undecodable (422)."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict[Path, str]]:
    return release_folder(tmp_path_factory)


CHROMIUM = os.environ.get("CAPTIONER_CHROMIUM", "/usr/bin/chromium")
PAGE_KEY = "page-key-1"



CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]



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
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become ready in {timeout} s")



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
            bad = [c.post("/caption", content=truncated_jpeg()), c.post("/caption", content=b"x" * 1_100_000)]
            return await asyncio.gather(*good, *bad)

    rs = asyncio.run(all_at_once())
    assert [r.json()["caption"] for r in rs[: len(images)]] == expected
    assert [(r.status_code, r.json()["type"].rsplit(":", 1)[1], r.headers["content-type"])
            for r in rs[len(images):]] == [(422, "undecodable", "application/problem+json"),
                                           (413, "too_large", "application/problem+json")]
    assert httpx.get(f"{served}/readyz").json()["decoding"] == EVALUATED.as_dict()


def start_server(release, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner.app.cli", "serve", "--model", str(release[0]), "--port", str(port), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )
    return proc, f"http://127.0.0.1:{port}"


def test_a_deployed_service_probes_keys_batches_disconnects_and_drains_on_sigterm(release) -> None:
    """What a load balancer and its operator see, against one real process with API keys."""
    import signal

    model, photos = release
    images = sorted(photos)[:4]
    proc, url = start_server(release, "--log-level", "info", env={"CAPTIONER_API_KEYS": "s3cret,other"})
    key = {"authorization": "Bearer s3cret"}
    try:
        # 1. Liveness at once, readiness only once the model is loaded and warm (503 + Retry-After before).
        seen, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline and (not seen or seen[-1] != 200):
            try:
                r = httpx.get(f"{url}/readyz", timeout=2)
                seen.append(r.status_code)
                if r.status_code == 503:
                    assert r.headers["retry-after"] and r.json()["type"].endswith(":not_ready")
                    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        assert seen[0] == 503 and seen[-1] == 200, seen

        # 2. Keys: everything but probes, pages and docs needs one.
        r = httpx.post(f"{url}/caption", content=images[0].read_bytes())
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers=key).status_code == 200

        # 3. A batch with a bad part: one entry per part, in order.
        parts = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in images]
        parts.append(("image", ("half.jpg", truncated_jpeg(), "image/jpeg")))
        r = httpx.post(f"{url}/captions", files=parts, headers=key, timeout=60)
        results = r.json()["results"]
        assert [x.get("caption") for x in results[:4]] == evaluate_like_the_pipeline(model, images, EVALUATED)
        assert results[4]["error"]["status"] == 422

        # 4. A client that hangs up mid-upload costs its own request only.
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            sock.sendall(b"POST /caption HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                         b"Content-Type: image/jpeg\r\nContent-Length: 500000\r\n\r\n" + b"\xff" * 20_000)
        assert httpx.post(f"{url}/caption", content=images[1].read_bytes(), headers=key, timeout=60).status_code == 200

        # 5. SIGTERM with requests in flight: every accepted request is answered, then a clean exit.
        async def in_flight() -> list[int]:
            async with httpx.AsyncClient(base_url=url, headers=key, timeout=120) as c:
                tasks = [asyncio.create_task(c.post("/caption", content=images[i % 4].read_bytes())) for i in range(40)]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                proc.send_signal(signal.SIGTERM)
                return [(await t).status_code for t in tasks]

        statuses = asyncio.run(in_flight())
        assert statuses == [200] * 40, statuses
        assert proc.wait(60) == -signal.SIGTERM  # uvicorn re-raises the signal once drained: a clean stop
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.stderr.read()
    assert "2 API key(s)" in log
    assert "POST /captions 200" in log and " images=5" in log and "POST /caption 401" in log
    assert log.count("POST /caption 200") >= 41 and "POST /caption 499" in log
    assert "\xff" not in log and "s3cret" not in log  # no image data, no keys in the log


def test_an_open_service_says_so(release) -> None:
    proc, url = start_server(release, "--log-level", "warning")
    try:
        wait_healthy(url, proc)
        assert httpx.post(f"{url}/caption", content=sorted(release[1])[0].read_bytes(), timeout=60).status_code == 200
    finally:
        proc.terminate()
        proc.wait(60)
    log = proc.stderr.read()
    assert "open, no API keys: anyone who reaches 127.0.0.1:" in log and "POST /caption" not in log  # warning level



@pytest.fixture(scope="module")
def attention_served(tmp_path_factory):
    """An attention model served by uvicorn in a thread of this process (so that the page can show
    a map), with an API key (so that the page must ask for it)."""
    import uvicorn

    from captioner.runtime.io import write_json
    from captioner.model.build import build_attention_model
    from captioner.datasets.text import build_vocabulary, save_vocabulary
    from tests.helpers.models import CAPTIONS

    out = tmp_path_factory.mktemp("attention-serve")
    vocab = build_vocabulary(CAPTIONS, 1)
    build_attention_model(len(vocab), 49, 1280, 8, 8, 8, 0.0, 1.0).save(out / "model.keras")
    save_vocabulary(out / "vocab.json", vocab)
    write_json(out / "meta.json", {"backbone": "efficientnet_lite0", "weights": "imagenet", "spatial": "grid",
                                   "feature_dim": 49 * 1280, "vocab_size": len(vocab), "kind": "attention"})
    write_decoding(out, DecodingConfig(beam_width=2, max_length=5))
    port = free_port()
    app = create_app(load_captioner(out), settings=ServeSettings(api_keys=(PAGE_KEY,)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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
            assert not page.is_visible("#keyrow")  # an open service asks for no key
            assert page.text_content("#caption") == ""

            # The API docs: Swagger UI from the app itself, no request leaving the server.
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            page.goto(served + "/docs")
            page.wait_for_selector("#operations-default-caption_caption_post", timeout=60_000)
            page.click("#operations-default-caption_caption_post button.opblock-summary-control")
            page.click("text=Try it out")
            assert page.locator("#operations-default-caption_caption_post input[type=file]").count() == 1
            assert requested and all(u.startswith(served + "/") for u in requested), requested

            page.goto(attention_served + "/")  # a service with keys: the page asks for one
            page.wait_for_selector("#keyrow", state="visible")
            page.set_input_files("#file", str(photo))
            page.click("#submit")
            page.wait_for_function("document.getElementById('error').textContent.startsWith('401')", timeout=60_000)
            page.fill("#key", PAGE_KEY)
            page.click("#submit")
            page.wait_for_function("document.getElementById('caption').textContent.length > 0", timeout=60_000)
            assert page.text_content("#error") == ""
            page.wait_for_function("document.getElementById('attention').naturalWidth > 0")
            assert page.is_visible("#attention")
            page.screenshot(path=str(shots / "demo-attention.png"), full_page=True)
        finally:
            browser.close()
    from PIL import Image

    for name in ("demo-merge.png", "demo-attention.png"):  # full pages at the viewport's width
        with Image.open(shots / name) as shot:
            assert shot.format == "PNG" and shot.size[0] == 900 and shot.size[1] >= 400, (name, shot.size)



def test_serve_load_benchmark_quick(tmp_path: Path) -> None:
    """benchmarks/serve_load.py --quick: the keys make bench needs, no 5xx, every bad upload a 4xx."""
    from benchmarks import serve_load

    part = serve_load.main(["--quick", "--weights", "none", "--data", str(tmp_path / "none"), "--no-unbatched",
                            "--out", str(tmp_path / "serve_load.json"), "--seconds", "3", "--requests", "15",
                            "--model", str(tmp_path / "no-model"), "--cache", str(tmp_path / "cache")])
    s = part["summary"]
    assert s["serve_5xx"] == 0 and s["serve_bad_4xx_fraction"] == 1.0
    run = part["runs"]["batch8"]
    assert s["serve_rps"] == run["rps"] == pytest.approx(run["captions"] / run["wall_s"], rel=0.02)
    assert run["captions"] > 0 and 0 < s["serve_p50_ms"] <= s["serve_p99_ms"]
    assert {k for k in run["by_kind"] if k != "good"} == set(serve_load.BAD_KINDS)
    assert run["by_kind"]["good"] == {"200": run["captions"]}
    assert json.loads((tmp_path / "serve_load.json").read_text())["summary"] == s

