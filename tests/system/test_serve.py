"""`captioner serve` as a real server: one uvicorn process on 127.0.0.1 answering concurrent
requests with the evaluation's captions, the demo page driven by headless Chromium (Playwright),
and the quick load benchmark."""

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

from captioner.app.serve import create_app
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
            bad = [c.post("/caption", content=truncated_jpeg()), c.post("/caption", content=b"x" * 1_100_000)]
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
    from tests.helpers.models import CAPTIONS

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

