"""Tests for captioner.features.images: any file in, (size, size, 3) uint8 RGB out, or ImageError naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.features.images import NOTE_KINDS, ImageError, decode, load_image, read_image, to_rgb

SIZE = 32


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _check(arr: np.ndarray, size: int = SIZE) -> None:
    assert arr.shape == (size, size, 3) and arr.dtype == np.uint8 and arr.flags.c_contiguous


@pytest.mark.parametrize(
    ("mode", "ext", "color", "rgb", "tol"),
    [
        ("RGB", "jpg", (200, 30, 40), (200, 30, 40), 3),  # JPEG is lossy, even on a flat colour
        ("RGB", "png", (200, 30, 40), (200, 30, 40), 0),
        ("L", "png", 128, (128, 128, 128), 0),
        ("1", "png", 1, (255, 255, 255), 0),
        ("1", "png", 0, (0, 0, 0), 0),
        ("P", "png", 2, (200, 100, 50), 0),  # palette index 2 of PALETTE
        ("CMYK", "jpg", (0, 255, 255, 0), (255, 0, 0), 3),  # no cyan, full magenta + yellow: red
        ("CMYK", "tif", (255, 0, 255, 0), (0, 255, 0), 0),
        ("CMYK", "tif", (0, 0, 0, 255), (0, 0, 0), 0),  # full black
        ("I;16", "png", 65535, (255, 255, 255), 0),  # 16-bit full scale
        ("I;16", "png", 12850, (50, 50, 50), 0),  # 12850 / 257 = 50
        ("I", "tif", 40000, (156, 156, 156), 0),  # > 255: 16-bit data, 40000 / 257 = 155.6
        ("I", "tif", 200, (200, 200, 200), 0),  # fits in 8 bits: kept
        ("F", "tif", 100.0, (100, 100, 100), 0),
        ("LA", "png", (50, 255), (50, 50, 50), 0),  # opaque
        ("LA", "png", (0, 128), (127, 127, 127), 1),  # black at half alpha on white
        ("RGBA", "png", (255, 0, 0, 128), (255, 127, 127), 1),  # red at half alpha on white
        ("YCbCr", "jpg", (76, 85, 255), (254, 0, 0), 4),  # red in YCbCr
    ],
)
def test_modes_become_rgb_with_the_right_colour(tmp_path: Path, mode: str, ext: str, color, rgb, tol: int) -> None:
    img = Image.new(mode, (40, 20), color)
    if mode == "P":
        img.putpalette(PALETTE)
    arr = load_image(_save(img, tmp_path / f"x.{ext}"), SIZE)
    _check(arr)
    assert np.abs(arr.astype(int) - rgb).max() <= tol, np.unique(arr.reshape(-1, 3), axis=0)[:4]


# 0: black, 1: dark blue, 2: orange, 3: white
PALETTE = [0, 0, 0, 10, 20, 30, 200, 100, 50, 255, 255, 255] + [0] * (252 * 3)


def test_grey_values_are_kept_pixel_by_pixel(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (SIZE, 1))  # 32 grey levels, left to right
    arr = load_image(_save(Image.fromarray(ramp), tmp_path / "ramp.png"), SIZE)
    np.testing.assert_array_equal(arr, np.repeat(ramp[:, :, None], 3, axis=2))
    wide = (ramp.astype(np.uint16) * 257).astype(np.uint16)  # the same ramp as 16-bit data
    path16 = _save(Image.fromarray(wide), tmp_path / "ramp16.png")
    with Image.open(path16) as im:
        assert im.mode.startswith("I")  # read back as 16-bit data
    arr16 = load_image(path16, SIZE)
    np.testing.assert_array_equal(arr16, np.repeat(ramp[:, :, None], 3, axis=2))


def test_palette_image_keeps_each_pixel_colour(tmp_path: Path) -> None:
    index = np.tile(np.repeat(np.arange(4, dtype=np.uint8), SIZE // 4), (SIZE, 1))  # 4 vertical bands
    img = Image.frombytes("P", (SIZE, SIZE), index.tobytes())
    img.putpalette(PALETTE)
    path = _save(img, tmp_path / "bands.png")
    with Image.open(path) as im:
        assert im.mode == "P"
    arr = load_image(path, SIZE)
    colours = np.array(PALETTE[:12], np.uint8).reshape(4, 3)
    np.testing.assert_array_equal(arr, colours[index])


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
    # half-transparent pixels blend with that background, not with white or black
    half = np.asarray(to_rgb(Image.new("RGBA", (2, 2), (0, 0, 255, 128)), background=(100, 150, 200)), int)
    expected = np.array([100, 150, 200]) * 127 / 255 + np.array([0, 0, 255]) * 128 / 255  # (50, 75, 228)
    assert np.abs(half - expected).max() <= 1
    opaque = to_rgb(Image.new("LA", (2, 2), (70, 255)), background=(1, 2, 3))
    assert opaque.getpixel((1, 1)) == (70, 70, 70)


_QUADRANTS = np.array(  # 3 rows x 2 columns of distinct colours, as stored
    [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 255, 0)], [(0, 255, 255), (255, 0, 255)]], np.uint8
)
# What each EXIF orientation shows, as numpy ops on the stored grid (EXIF 2.3 definitions).
_ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed: mirrored, then rotated 90 CCW
    6: lambda a: np.rot90(a, -1),  # rotated 90 CW
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed: mirrored, then rotated 90 CW
    8: lambda a: np.rot90(a, 1),  # rotated 90 CCW
}


@pytest.mark.parametrize("orientation", sorted(_ORIENTED))
def test_every_exif_orientation_shows_the_right_colours(tmp_path: Path, orientation: int) -> None:
    block = 20
    stored = np.repeat(np.repeat(_QUADRANTS, block, axis=0), block, axis=1)  # 60 x 40 pixels
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(stored), tmp_path / "o.png", exif=exif)
    loaded = read_image(path, 60, resample=Image.Resampling.NEAREST)
    grid = _ORIENTED[orientation](_QUADRANTS)
    rows, cols = grid.shape[:2]
    assert decode(path, 60).size == (cols * block, rows * block)
    for i in range(rows):
        for j in range(cols):
            centre = loaded.pixels[int((i + 0.5) * 60 / rows), int((j + 0.5) * 60 / cols)]
            assert tuple(centre) == tuple(grid[i, j]), (orientation, i, j)
    assert loaded.notes == ((f"exif_rotated: orientation {orientation} applied",) if orientation > 1 else ())


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
    wide = np.zeros((10, 300, 3), np.uint8)
    wide[:, 150:] = (9, 90, 200)  # left half black, right half coloured
    arr = load_image(_save(Image.fromarray(wide), tmp_path / "wide.png"), SIZE)
    _check(arr)
    assert np.all(arr[:, :14] == 0) and np.all(arr[:, 18:] == (9, 90, 200))  # squashed, not cropped
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
    loaded = read_image(_save(Image.new("RGB", (64, 48), (1, 120, 230)), tmp_path / "plain.jpg"), SIZE)
    _check(loaded.pixels)
    assert np.abs(loaded.pixels.astype(int) - (1, 120, 230)).max() <= 3
    assert loaded.notes == ()


@pytest.mark.parametrize(
    ("image", "name", "save", "expected", "rgb"),
    [
        (Image.new("L", (40, 40), 9), "grey.png", {}, ("mode_converted: L -> RGB",), (9, 9, 9)),
        (Image.new("RGBA", (40, 40)), "a.png", {}, ("transparency_flattened: RGBA composited onto white",),
         (255, 255, 255)),
        (Image.new("RGB", (40, 40), (5, 6, 7)), "p.jpg", {"format": "PNG"},
         ("format_mismatch: PNG data in a .jpg file",), (5, 6, 7)),
        (Image.new("RGB", (3, 50), (70, 80, 90)), "thin.png", {}, ("tiny_upscaled: 3x50 image",), (70, 80, 90)),
    ],
)
def test_conversions_are_noted(
    tmp_path: Path, image: Image.Image, name: str, save: dict, expected: tuple, rgb: tuple
) -> None:
    loaded = read_image(_save(image, tmp_path / name, **save), SIZE)
    _check(loaded.pixels)
    assert np.all(loaded.pixels == rgb)
    assert loaded.notes == expected
    assert all(n.split(":")[0] in NOTE_KINDS for n in loaded.notes)


def test_tiny_is_judged_on_the_stored_size_not_the_decoded_one(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (64, 64), (9, 9, 9)), tmp_path / "draft.jpg")
    assert read_image(path, 8, tiny_side=32).notes == ("reduced_on_decode: 64x64 JPEG decoded at 8x8",)
    assert read_image(path, 8, tiny_side=100).notes[0] == "tiny_upscaled: 64x64 image"
