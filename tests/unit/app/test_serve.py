"""`captioner serve`: the HTTP API (FastAPI TestClient), limits and bad input as 4xx JSON, batching
(a real uvicorn process and the demo page in Chromium: tests/system/test_serve.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captioner.decoding.captioner import load_captioner
from captioner.app.serve import Batcher, ServeSettings, create_app
from tests.helpers.models import EVALUATED, evaluate_like_the_pipeline, release_folder

@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict[Path, str]]:
    return release_folder(tmp_path_factory)


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


