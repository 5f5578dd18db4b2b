"""Decode any image file into a fixed-size uint8 RGB array, with errors that name the file."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Exceptions PIL raises on undecodable input (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)

# Modes whose samples are wider than 8 bits; mapped to 0..255 by `_to_uint8_gray`.
_WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """An image file is missing, empty, truncated or not an image; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def _to_uint8_gray(im: Image.Image) -> Image.Image:
    """Map a wide-sample (16-bit / int32 / float) gray image to mode "L".

    ``I;16*`` modes use the full 16-bit range; ``I`` and ``F`` images are kept as-is when
    their values fit in 0..255, else treated as 16-bit data. Values are clipped to 0..255.
    """
    arr = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16") or (arr.size and arr.max() > 255.0):
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _has_alpha(im: Image.Image) -> bool:
    """Whether `im` carries transparency (an alpha band or a transparent palette/colour key)."""
    return im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited onto `background`."""
    if im.mode in _WIDE_MODES:
        im = _to_uint8_gray(im)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _orient(im: Image.Image) -> Image.Image:
    """Return a detached copy of loaded `im` with its EXIF orientation applied.

    Unreadable EXIF leaves the pixels as stored rather than rejecting a decodable image.
    """
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        return im.copy()


def decode(path: Path, size: int) -> Image.Image:
    """Open and fully decode `path`, letting JPEG decode at a reduced scale of at least `size`.

    `Image.draft` makes the JPEG decoder scale by 1/2, 1/4 or 1/8 while keeping both sides
    >= `size`, so a 6000x4000 photo is decoded at 750x500 and memory stays bounded.
    `Image.MAX_IMAGE_PIXELS` (decompression-bomb guard) is left at PIL's default.
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        im.load()
        return _orient(im)


def load_image(
    path: str | os.PathLike[str],
    size: int,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> np.ndarray:
    """Load `path` as a (size, size, 3) uint8 RGB array: EXIF-oriented, any mode, squashed to size.

    Raises ImageError (naming the file) for a missing, empty, truncated or non-image file.
    """
    p = Path(path)
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    try:
        if p.stat().st_size == 0:
            raise ImageError(p, "empty file")
    except FileNotFoundError:
        raise ImageError(p, "file not found") from None
    except OSError as e:
        raise ImageError(p, f"cannot read file ({e.strerror or e})") from e
    try:
        im = to_rgb(decode(p, size))
        if im.size != (size, size):
            im = im.resize((size, size), resample)
    except Image.DecompressionBombError as e:
        raise ImageError(p, f"too many pixels (decompression bomb guard): {e}") from e
    except Image.UnidentifiedImageError:
        raise ImageError(p, "not a recognised image format") from None
    except _DECODE_ERRORS as e:
        raise ImageError(p, f"cannot decode image ({type(e).__name__}: {e})") from e
    return np.asarray(im, dtype=np.uint8)
