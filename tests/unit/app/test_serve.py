"""`captioner serve`: the HTTP API (FastAPI TestClient): one and several images, limits and bad
input as RFC 9457 problems, probes, keys, CORS, metrics, the OpenAPI description, batching (a
real uvicorn process, SIGTERM and the pages in Chromium: tests/system/test_serve.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captioner.decoding.captioner import load_captioner
from captioner.app.problems import MEDIA_TYPE, TYPE_PREFIX
from captioner.app.serve import Batcher, ServeSettings, create_app, read_api_keys
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


def kind(r) -> str:
    """The problem kind of an error response, checking its RFC 9457 shape."""
    assert r.headers["content-type"] == MEDIA_TYPE, r.headers
    body = r.json()
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == r.status_code, body
    assert body["type"].startswith(TYPE_PREFIX) and body["title"] and body["detail"]
    return body["type"].removeprefix(TYPE_PREFIX)


def test_probes_and_status_hold_no_paths(client, release) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    h = r.json()
    assert r.status_code == 200 and h["status"] == "ready" and h["backbone"] == "efficientnet_lite0"
    assert h["decoding"] == EVALUATED.as_dict() and h["attention"] is False and h["auth"] == "none"
    assert str(release[0]) not in r.text and release[0].name not in r.text  # no filesystem paths


def test_several_images_in_one_request_each_get_a_result_in_order(client, release) -> None:
    model, photos = release
    images = sorted(photos)[:3]
    expected = evaluate_like_the_pipeline(model, images, EVALUATED)
    parts = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in images]
    parts.insert(1, ("image", ("bad.jpg", b"not an image at all", "image/jpeg")))
    r = client.post("/captions", files=parts)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == [images[0].name, "bad.jpg", *(p.name for p in images[1:])]
    assert results[1]["error"]["type"] == TYPE_PREFIX + "not_an_image" and results[1]["error"]["status"] == 415
    assert [x["caption"] for i, x in enumerate(results) if i != 1] == expected


def test_batch_limits_are_problems(cap) -> None:
    tight = ServeSettings(max_upload_bytes=200_000, max_pixels=1_000_000, max_images=2, max_request_bytes=100_000)
    with TestClient(create_app(cap, settings=tight), raise_server_exceptions=False) as c:
        three = [("image", (f"{i}.jpg", jpeg_bytes(), "image/jpeg")) for i in range(3)]
        r = c.post("/captions", files=three)
        assert r.status_code == 413 and kind(r) == "too_many_images"
        r = c.post("/captions", files=[("image", ("big.jpg", os.urandom(150_000), "image/jpeg"))])
        assert r.status_code == 413 and kind(r) == "too_large"
        r = c.post("/captions", files=[("other", ("a.jpg", jpeg_bytes(), "image/jpeg"))])
        assert r.status_code == 422 and kind(r) == "no_image"
        r = c.post("/captions", content=jpeg_bytes(), headers={"content-type": "image/jpeg"})
        assert r.status_code == 422 and kind(r) == "no_image"


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
    body, status, problem_kind = BAD[name]
    for r in (client.post("/caption", content=body),
              client.post("/caption", files={"image": ("x.jpg", body, "image/jpeg")})):
        assert r.status_code == status, r.text
        assert kind(r) == problem_kind
    assert client.get("/readyz").status_code == 200  # still serving


def test_form_without_an_image_and_unknown_routes_are_problems(client) -> None:
    r = client.post("/caption", data={"note": "no file"}, files={"a": ("a.jpg", b"1"), "b": ("b.jpg", b"2")})
    assert r.status_code == 422 and kind(r) == "no_image"
    r = client.get("/nowhere")
    assert r.status_code == 404 and kind(r) == "not_found"
    r = client.post("/caption?attention=maybe", content=jpeg_bytes())
    assert r.status_code == 422 and kind(r) == "bad_request" and "attention" in r.json()["detail"]


def test_a_failure_in_the_model_thread_is_a_500_json_and_the_service_goes_on(cap, monkeypatch) -> None:
    with TestClient(create_app(cap, settings=SMALL), raise_server_exceptions=False) as c:
        monkeypatch.setattr(type(cap), "features_of", lambda self, px: (_ for _ in ()).throw(RuntimeError("boom")))
        r = c.post("/caption", content=jpeg_bytes())
        assert r.status_code == 500 and kind(r) == "internal"
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
        assert e.value.status == 503 and e.value.kind == "busy"
    finally:
        b.close()


def test_api_keys_guard_everything_but_probes_pages_and_docs(cap, tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nkey-one\n\nkey-two\n")
    assert read_api_keys("key-zero, key-one", keys) == ("key-zero", "key-one", "key-two")
    with pytest.raises(ValueError, match="no API keys"):
        read_api_keys(None, tmp_path / "empty") if (tmp_path / "empty").write_text("# none\n") else None
    with pytest.raises(ValueError, match=r"missing: cannot read"):
        read_api_keys(None, tmp_path / "missing")
    settings = ServeSettings(api_keys=read_api_keys(None, keys))
    with TestClient(create_app(cap, settings=settings), raise_server_exceptions=False) as c:
        for path in ("/caption", "/captions"):
            r = c.post(path, content=jpeg_bytes())
            assert r.status_code == 401 and kind(r) == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
        for header in ("Bearer key-three", "Basic key-one", "key-one", "Bearer "):
            assert c.post("/caption", content=jpeg_bytes(), headers={"authorization": header}).status_code == 401
        assert c.get("/metrics").status_code == 401
        r = c.post("/caption", content=jpeg_bytes(), headers={"authorization": "Bearer key-two"})
        assert r.status_code == 200 and r.json()["caption"]
        assert c.get("/metrics", headers={"authorization": "bearer key-one"}).status_code == 200
        for path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        assert c.get("/readyz").json()["auth"] == "bearer"
        spec = c.get("/openapi.json").json()
        assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
        assert spec["paths"]["/caption"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in spec["paths"]["/healthz"]["get"]


def test_cors_only_for_the_origins_given(cap) -> None:
    with TestClient(create_app(cap, settings=ServeSettings(cors_origins=("https://app.example",)))) as c:
        pre = {"origin": "https://app.example", "access-control-request-method": "POST",
               "access-control-request-headers": "authorization"}
        r = c.options("/caption", headers=pre)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.options("/caption", headers={**pre, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with TestClient(create_app(cap, settings=SMALL)) as c:  # default: no CORS at all
        r = c.get("/healthz", headers={"origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers


def test_openapi_declares_the_uploads_and_docs_need_no_cdn(client) -> None:
    spec = client.get("/openapi.json").json()
    one = spec["paths"]["/caption"]["post"]["requestBody"]["content"]
    many = spec["paths"]["/captions"]["post"]["requestBody"]["content"]
    assert one["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary" and "image/*" in one
    assert many["multipart/form-data"]["schema"]["properties"]["image"]["type"] == "array"
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    page = client.get("/docs").text
    assert "cdn" not in page and "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in page and client.get(f"/docs-assets/{asset}").status_code == 200


def test_metrics_count_requests_batches_and_queue(cap) -> None:
    with TestClient(create_app(cap, settings=SMALL), raise_server_exceptions=False) as c:
        for _ in range(3):
            assert c.post("/caption", content=jpeg_bytes()).status_code == 200
        c.post("/caption", content=b"")
        text = c.get("/metrics").text
    assert 'captioner_requests_total{method="POST",route="/caption",status="200"} 3.0' in text
    assert 'captioner_requests_total{method="POST",route="/caption",status="400"} 1.0' in text
    assert "captioner_model_batch_images_count 3.0" in text and "captioner_images_total 3.0" in text
    assert "captioner_queue_depth 0.0" in text and "captioner_ready 1.0" in text
    assert 'captioner_request_seconds_bucket{le="+Inf",route="/caption"} 4.0' in text


def test_access_log_has_one_line_per_request_without_image_data(client, caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="captioner.access"):
        client.post("/caption", content=jpeg_bytes())
        client.post("/captions", files=[("image", ("a.jpg", jpeg_bytes(), "image/jpeg"))] * 2)
        client.get("/healthz")
    lines = [r.getMessage() for r in caplog.records if r.name == "captioner.access"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("POST /caption 200 ") and lines[0].endswith(" ms images=1")
    assert lines[1].startswith("POST /captions 200 ") and lines[1].endswith(" ms images=2")
    assert lines[2].startswith("GET /healthz 200 ")


def test_readiness_waits_for_the_model_loaded_in_the_background(cap) -> None:
    import threading

    gate = threading.Event()

    def slow_loader():
        gate.wait(60)
        return cap

    with TestClient(create_app(slow_loader, settings=SMALL), raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and kind(r) == "not_ready" and r.headers["retry-after"] == "2"
        r = c.post("/caption", content=jpeg_bytes())
        assert r.status_code == 503 and kind(r) == "not_ready" and "retry-after" in r.headers
        gate.set()
        for _ in range(600):
            if c.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.1)
        assert c.post("/caption", content=jpeg_bytes()).status_code == 200


# ---------------------------------------------------------------- real servers




def test_the_service_decodes_with_consensus_as_the_pipeline_does(release, tmp_path) -> None:
    """A service started with `rerank: consensus` captions each image as the captioner does with the
    same settings and the folder's n-gram frequencies (one image per batch, as the requests come
    one by one: on this toy model, near-tied candidates can swap between batch sizes); without
    the frequencies it never becomes ready and says why."""
    import dataclasses
    import shutil
    import time

    from captioner.decoding.cider import CiderD
    from captioner.model.folder import NGRAMS_FILE

    model, photos = release
    folder = tmp_path / "release"
    shutil.copytree(model, folder)
    CiderD([[c.split()] for c in photos.values()]).save(folder / NGRAMS_FILE)
    from captioner.features.images import read_image

    config = EVALUATED.overridden(beam_width=4, rerank="consensus", consensus_weights="probability")
    images = sorted(photos)[::4]
    cap = load_captioner(folder)
    size = cap.backbone.input_size
    expected = [" ".join(cap.caption_features(cap.features_of(read_image(p, size).pixels[None]), config)[0].words)
                for p in images]
    with TestClient(create_app(cap, config, SMALL), raise_server_exceptions=False) as c:
        got = [c.post("/caption", content=p.read_bytes(), headers={"content-type": "image/jpeg"}).json()
               for p in images]
    assert [g["caption"] for g in got] == expected and got[0]["decoding"]["rerank"] == "consensus"
    bare = dataclasses.replace(load_captioner(model), ngrams=None)
    with TestClient(create_app(lambda: bare, config, SMALL), raise_server_exceptions=False) as c:
        for _ in range(100):
            r = c.get("/readyz")
            if "missing" in r.text:
                break
            time.sleep(0.05)
    assert r.status_code == 503 and f"{NGRAMS_FILE}: missing; consensus reranking needs" in r.text
