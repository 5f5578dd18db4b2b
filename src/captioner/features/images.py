"""Decode any image file into a fixed-size uint8 RGB array, with errors that name the file.

Decodable but unusual images are converted and the conversions are said (`read_image` returns
notes such as ``"mode_converted: CMYK -> RGB"``); files that cannot be decoded raise
`ImageError` naming the file. Notes are ``"<kind>: <detail>"`` with a kind from `NOTE_KINDS`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

__all__ = [
    "DECODE_ERRORS", "NOTE_KINDS", "ImageError", "LoadedImage", "decode", "load_image", "read_image",
    "to_rgb",
]

# Exceptions PIL raises on undecodable input (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)

# Modes whose samples are wider than 8 bits; mapped to 0..255 by `_to_uint8_gray`.
_WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")

# What a file's extension promises, by the formats PIL may report for it (MPO: camera JPEGs).
_FORMATS_BY_SUFFIX: dict[str, tuple[str, ...]] = {
    ".jpg": ("JPEG", "MPO"),
    ".jpeg": ("JPEG", "MPO"),
    ".png": ("PNG",),
}
_JPEG_FORMATS = ("JPEG", "MPO")

# Kinds of conversion a decodable image may need; each note starts with one of them.
NOTE_KINDS: tuple[str, ...] = (
    "format_mismatch",  # e.g. PNG data in a .jpg file: decoded as what it is
    "multi_frame",  # animated GIF/PNG/WebP, multi-picture JPEG: the first frame is used
    "mode_converted",  # grey, palette, CMYK, 16-bit... -> 8-bit RGB
    "transparency_flattened",  # alpha or transparent palette composited onto white
    "exif_rotated",  # EXIF orientation applied
    "exif_unreadable",  # broken EXIF: pixels kept as stored
    "reduced_on_decode",  # huge JPEG decoded at 1/2..1/8 scale (bounded memory)
    "tiny_upscaled",  # a side below `tiny_side` pixels: upscaled, features will be poor
)


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


def _orient(im: Image.Image) -> tuple[Image.Image, str | None]:
    """A detached copy of loaded `im` with its EXIF orientation applied, and a note if any.

    Unreadable EXIF leaves the pixels as stored rather than rejecting a decodable image.
    """
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        out = ImageOps.exif_transpose(im)
    except DECODE_ERRORS as e:
        return im.copy(), f"exif_unreadable: orientation ignored ({type(e).__name__})"
    if out is None:  # pragma: no cover - only with in_place=True
        out = im.copy()
    note = f"exif_rotated: orientation {orientation} applied" if orientation in range(2, 9) else None
    return out, note


def _decode_noted(path: Path, size: int, tiny_side: int = 0) -> tuple[Image.Image, list[str]]:
    """`decode` plus notes on what was unusual about the file (format, frames, stored size
    below `tiny_side` or reduced on decode, EXIF orientation)."""
    notes: list[str] = []
    with Image.open(path) as im:
        expected = _FORMATS_BY_SUFFIX.get(path.suffix.lower())
        if expected and im.format not in expected:
            notes.append(f"format_mismatch: {im.format} data in a {path.suffix} file")
        if getattr(im, "is_animated", False):
            notes.append(f"multi_frame: first frame of an animated {im.format} used")
        stored = im.size
        if min(stored) < tiny_side:
            notes.append(f"tiny_upscaled: {stored[0]}x{stored[1]} image")
        if im.format in _JPEG_FORMATS:
            im.draft("RGB", (size, size))
        im.load()
        if im.size != stored:
            w, h = stored
            notes.append(f"reduced_on_decode: {w}x{h} {im.format} decoded at {im.size[0]}x{im.size[1]}")
        out, note = _orient(im)
    return out, notes + ([note] if note else [])


def decode(path: Path, size: int) -> Image.Image:
    """Open and fully decode `path`, letting JPEG decode at a reduced scale of at least `size`.

    `Image.draft` makes the JPEG decoder scale by 1/2, 1/4 or 1/8 while keeping both sides
    >= `size`, so a 6000x4000 photo is decoded at 750x500 and memory stays bounded.
    `Image.MAX_IMAGE_PIXELS` (decompression-bomb guard) is left at PIL's default.
    """
    return _decode_noted(Path(path), size)[0]


@dataclass(frozen=True)
class LoadedImage:
    """A decoded (size, size, 3) uint8 RGB image and the conversions it needed (see NOTE_KINDS)."""

    pixels: np.ndarray
    notes: tuple[str, ...] = ()


def _mode_notes(im: Image.Image) -> list[str]:
    """Notes on the mode conversion `to_rgb` will apply to `im`."""
    if _has_alpha(im):
        return [f"transparency_flattened: {im.mode} composited onto white"]
    if im.mode != "RGB":
        return [f"mode_converted: {im.mode} -> RGB"]
    return []


def read_image(
    path: str | os.PathLike[str],
    size: int,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
    tiny_side: int = 32,
) -> LoadedImage:
    """Load `path` as (size, size, 3) uint8 RGB plus notes on the conversions it needed.

    EXIF-oriented, any mode, squashed to size; a side under `tiny_side` pixels is noted.
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
        im, notes = _decode_noted(p, size, tiny_side)
        notes += _mode_notes(im)
        im = to_rgb(im)
        if im.size != (size, size):
            im = im.resize((size, size), resample)
    except Image.DecompressionBombError as e:
        raise ImageError(p, f"too many pixels (decompression bomb guard): {e}") from e
    except Image.UnidentifiedImageError:
        raise ImageError(p, "not a recognised image format") from None
    except DECODE_ERRORS as e:
        raise ImageError(p, f"cannot decode image ({type(e).__name__}: {e})") from e
    return LoadedImage(np.asarray(im, dtype=np.uint8), tuple(notes))


def load_image(
    path: str | os.PathLike[str],
    size: int,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> np.ndarray:
    """Load `path` as a (size, size, 3) uint8 RGB array: EXIF-oriented, any mode, squashed to size.

    Raises ImageError (naming the file) for a missing, empty, truncated or non-image file.
    """
    return read_image(path, size, resample).pixels
