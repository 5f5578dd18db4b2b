"""Tests for captioner.images: any file in, (size, size, 3) uint8 RGB out, or ImageError naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.images import NOTE_KINDS, ImageError, decode, load_image, read_image, to_rgb

SIZE = 32


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _check(arr: np.ndarray, size: int = SIZE) -> None:
    assert arr.shape == (size, size, 3) and arr.dtype == np.uint8 and arr.flags.c_contiguous


@pytest.mark.parametrize(
    ("mode", "ext", "color"),
    [
        ("RGB", "jpg", (200, 30, 40)),
        ("L", "png", 128),
        ("1", "png", 1),
        ("CMYK", "jpg", (0, 255, 255, 0)),
        ("I;16", "png", 65535),
        ("I", "tif", 40000),
        ("F", "tif", 100.0),
        ("LA", "png", (50, 255)),
        ("YCbCr", "jpg", (128, 128, 128)),
    ],
)
def test_modes_become_rgb(tmp_path: Path, mode: str, ext: str, color) -> None:
    path = _save(Image.new(mode, (40, 20), color), tmp_path / f"x.{ext}")
    _check(load_image(path, SIZE))


def test_sixteen_bit_scaled_not_clipped(tmp_path: Path) -> None:
    path = _save(Image.new("I;16", (8, 8), 32896), tmp_path / "g16.png")  # 32896 / 257 = 128
    assert np.all(load_image(path, SIZE) == 128)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    arr = load_image(_save(img, tmp_path / "a.png"), 10)
    assert tuple(arr[5, 5]) == (255, 255, 255) and tuple(arr[0, 0]) == (255, 0, 0)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    img.putpixel((0, 0), 1)
    arr = load_image(_save(img, tmp_path / "p.gif", transparency=0), 10)
    assert tuple(arr[5, 5]) == (255, 255, 255) and tuple(arr[0, 0]) == (0, 0, 255)


def test_to_rgb_background_is_an_argument() -> None:
    out = to_rgb(Image.new("LA", (2, 2), (0, 0)), background=(1, 2, 3))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (1, 2, 3)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed: red ends up on top
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    assert decode(path, 20).size == (20, 40)  # portrait after rotation
    arr = load_image(path, 20).astype(int)
    assert arr[2, 10, 0] > 200 and arr[2, 10, 2] < 60  # top is red
    assert arr[17, 10, 2] > 200 and arr[17, 10, 0] < 60  # bottom is blue


def test_squash_resize_and_1x1(tmp_path: Path) -> None:
    _check(load_image(_save(Image.new("RGB", (300, 10), (9, 9, 9)), tmp_path / "wide.png"), SIZE))
    arr = load_image(_save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path / "one.png"), SIZE)
    _check(arr)
    assert np.all(arr == np.array([10, 20, 30], np.uint8))


def test_huge_jpeg_decoded_at_reduced_scale(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (6000, 4000), (10, 200, 30)), tmp_path / "huge.jpg", quality=50)
    assert decode(path, 224).size == (750, 500)  # JPEG draft: 1/8 scale, both sides >= 224
    arr = load_image(path, 224)
    _check(arr, 224)
    assert np.abs(arr.astype(int) - [10, 200, 30]).max() <= 3


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.jpg: file not found"):
        load_image(tmp_path / "nope.jpg", SIZE)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file"):
        load_image(tmp_path / "empty.jpg", SIZE)


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG\n")
    with pytest.raises(ImageError, match=r"text\.jpg: not a recognised image format"):
        load_image(tmp_path / "text.jpg", SIZE)


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_truncated_file(tmp_path: Path, ext: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = _save(Image.fromarray(noise), tmp_path / f"full.{ext}").read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match=rf"cut\.{ext}: cannot decode image"):
        load_image(tmp_path / f"cut.{ext}", SIZE)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageError, match=r"dir\.jpg"):
        load_image(tmp_path / "dir.jpg", SIZE)


def test_error_is_a_value_error_with_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_image(tmp_path / "gone.png", SIZE)
    assert isinstance(info.value, ImageError) and info.value.path == str(tmp_path / "gone.png")


def test_decompression_bomb_guard_is_kept() -> None:
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None and 50_000_000 <= limit <= 500_000_000


# ---------------------------------------------------------------- conversion notes


def test_plain_rgb_jpeg_needs_no_conversion(tmp_path: Path) -> None:
    loaded = read_image(_save(Image.new("RGB", (64, 48), (1, 2, 3)), tmp_path / "plain.jpg"), SIZE)
    _check(loaded.pixels)
    assert loaded.notes == ()


@pytest.mark.parametrize(
    ("image", "name", "save", "expected"),
    [
        (Image.new("L", (40, 40), 9), "grey.png", {}, ("mode_converted: L -> RGB",)),
        (Image.new("RGBA", (40, 40)), "a.png", {}, ("transparency_flattened: RGBA composited onto white",)),
        (Image.new("RGB", (40, 40)), "p.jpg", {"format": "PNG"}, ("format_mismatch: PNG data in a .jpg file",)),
        (Image.new("RGB", (3, 50)), "thin.png", {}, ("tiny_upscaled: 3x50 image",)),
    ],
)
def test_conversions_are_noted(tmp_path: Path, image: Image.Image, name: str, save: dict, expected: tuple) -> None:
    loaded = read_image(_save(image, tmp_path / name, **save), SIZE)
    _check(loaded.pixels)
    assert loaded.notes == expected
    assert all(n.split(":")[0] in NOTE_KINDS for n in loaded.notes)


def test_tiny_is_judged_on_the_stored_size_not_the_decoded_one(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (64, 64), (9, 9, 9)), tmp_path / "draft.jpg")
    assert read_image(path, 8, tiny_side=32).notes == ("reduced_on_decode: 64x64 JPEG decoded at 8x8",)
    assert read_image(path, 8, tiny_side=100).notes[0] == "tiny_upscaled: 64x64 image"
