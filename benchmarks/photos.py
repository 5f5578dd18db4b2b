"""Generated images of the sizes and kinds people upload, for the service's load benchmark and
the export's parity tests: camera-size JPEGs with an EXIF orientation, odd aspects, grey JPEGs,
16-bit grey and transparent PNGs. Each is a smooth pattern plus noise (compresses like a photo),
optionally blended with a real photo's pixels so that the model sees something photo-like."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["SIZE_CLASSES", "photo_mix", "size_class"]

# size class -> largest pixel count in it
SIZE_CLASSES = {"small": 500_000, "medium": 4_000_000, "camera": 10**9}


def size_class(width: int, height: int) -> str:
    """The size class of an image: small (<= 0.5 MP, Flickr8k's), medium (<= 4 MP), camera."""
    return next(name for name, most in SIZE_CLASSES.items() if width * height <= most)


def _pixels(width: int, height: int, rng: np.random.Generator, base: np.ndarray | None) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    out = np.stack([128 + 90 * np.sin(x / 41.0 + p) * np.cos(y / 57.0 - p) for p in phase], -1)
    if base is not None:  # a real photo stretched over it
        out = 0.3 * out + 0.7 * np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR))
    out += rng.normal(0, 8, out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo_mix(seed: int = 0, bases: list[np.ndarray] | None = None, camera: tuple[int, int] = (4032, 3024)) -> dict[str, bytes]:
    """One image of each kind, by name: ``camera_exif6`` (12 MP JPEG stored sideways with
    orientation 6, as phones write them), ``camera_exif3``, ``wide`` (3:1 JPEG), ``grey``
    (grey JPEG), ``png16`` (16-bit grey PNG), ``rgba`` (PNG with varying transparency)."""
    rng = np.random.default_rng(seed)
    base = (lambda i: bases[i % len(bases)]) if bases else (lambda i: None)
    out: dict[str, bytes] = {}
    w, h = camera
    for i, orientation in enumerate((6, 3)):
        im = Image.fromarray(_pixels(w, h, rng, base(i)))
        exif = im.getexif()
        exif[0x0112] = orientation
        out[f"camera_exif{orientation}"] = _encode(im, "JPEG", quality=88, exif=exif.tobytes())
    out["wide"] = _encode(Image.fromarray(_pixels(1800, 600, rng, base(2))), "JPEG", quality=90)
    out["grey"] = _encode(Image.fromarray(_pixels(1600, 1200, rng, base(3))[:, :, 1]), "JPEG", quality=90)
    grey16 = _pixels(1024, 768, rng, base(4))[:, :, 0].astype(np.uint16) * 257 + rng.integers(0, 257, (768, 1024)).astype(np.uint16)
    out["png16"] = _encode(Image.fromarray(grey16), "PNG")
    rgb = _pixels(1200, 900, rng, base(5))
    alpha = np.clip(np.linspace(0, 255, 1200)[None, :] + rng.normal(0, 20, (900, 1200)), 0, 255).astype(np.uint8)
    out["rgba"] = _encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")
    return out
