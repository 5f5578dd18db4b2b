"""Fault injection: bad input, interrupted and repeated runs, reproducibility and safe loading.
Every case is tried here with a generated fixture, or points to the existing test that covers it
(``see: tests/...``).

| case | what the pipeline does |
|---|---|
| image: empty, truncated (JPEG/PNG/header only), text/HTML/random bytes named .jpg/.png, a folder named .jpg, decompression bomb | skipped by extract_features, counted and listed with its problem in `data/features/<backbone>.report.json` |
| image: listed in a split but missing on disk | dropped by the data-set reader, counted in `data/text/report.json` (and `missing_on_disk` in the features report) |
| image: PNG/WebP data named .jpg, palette, RGBA, CMYK, grey, 16-bit, animated, 1x1, 6000x4000, EXIF-rotated | converted and kept; each conversion counted by kind in the report (`converted`, with examples) |
| more unreadable images than `features.max_bad_images` (a fraction) | extract_features stops with one line naming the report; shards kept, so a rerun is instant |
| captions of an image without features | dropped by train (and evaluate) with a printed count |
| caption lines: no tab, bad/absent `#n`, >5 captions, empty, blank, CRLF, no final newline, non-UTF-8, BOM, very long, image in no split, duplicates | parsed when valid, otherwise ignored/repaired/noted with file:line in the reader report; too many bad lines is an error naming the file |
| split files: bad entries, duplicates, several splits, missing on disk; no train/dev split | reported as above; an empty train or dev split stops clean_text with one line |
| params: unknown keys, wrong types, impossible values, missing data root | `ParamsError` naming the key; stages print one line, no traceback |
| a stage killed by SIGKILL/SIGTERM mid-write, or a power loss | old artifact or none (fsynced; a folder swap cut between its two renames is restored by the next write); SIGTERM leaves no temporaries, SIGKILL's are removed by the next write; concurrent writers take turns (see: tests/unit/runtime/test_io.py) |
| extract_features killed after some batches, then `dvc repro` | resumes from the shards, Parquet identical bit for bit to an uninterrupted run |
| same params and seed twice | features and train/eval metrics identical bit for bit (same machine and thread count) |
| pickles, object arrays, Lambda layers, YAML tags, mismatched model/vocab/features | refused with a message naming the file |
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from captioner.features.backbones import Backbone
from captioner.features.backbones.torch_legacy import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    CheckpointError,
    UnsafeCheckpointError,
    read_state_dict,
)
from captioner.datasets.readers import load_dataset
from captioner.datasets.flickr8k import load_flickr8k
from captioner.features.extract import check_bad_images, extract, extraction_report
from captioner.features.shards import extraction_key, shard_path
from captioner.features.store import read_features, write_features
from captioner.runtime.io import atomic_path, stale_temporaries
from captioner.runtime.stage import reported_errors
from captioner.config.params import DataParams, ParamsError, check_data_root, load_params
from captioner.datasets.sequences import drop_without_features, feature_rows, load_sequences
from captioner.datasets.text import clean_caption, load_vocabulary
from tests.helpers.toy import tiny_backbone as make_tiny_backbone

REPO = Path(__file__).resolve().parents[3]
SIZE = 32  # zoo images (40-48 px) are not reduced on decode


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_backbone() -> Backbone:
    return make_tiny_backbone(SIZE, dim=3, filters=4)


def load_stage(name: str) -> ModuleType:
    """Import stages/<name>.py as a module (its `main` runs in this process), as `python
    stages/<name>.py` would: with stages/ on the path, for stages/_stage.py."""
    if str(REPO / "stages") not in sys.path:
        sys.path.insert(0, str(REPO / "stages"))
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noise_image(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0, **save) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, **save)
    return path


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A tiny PNG whose header claims side x side pixels (beyond PIL's bomb limit)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", side, side)
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    path.write_bytes(bytes(png))
    return path


# ---------------------------------------------------------------- bad images

# name -> conversion kinds expected (decodable: converted and kept)
CONVERTED: dict[str, set[str]] = {
    "ok.jpg": set(),
    "png_named.jpg": {"format_mismatch"},
    "webp_named.jpg": {"format_mismatch"},
    "palette.png": {"mode_converted"},
    "rgba.png": {"transparency_flattened"},
    "palette_transparent.png": {"transparency_flattened"},
    "cmyk.jpg": {"mode_converted"},
    "grey.jpg": {"mode_converted"},
    "grey16.png": {"mode_converted"},
    "animated.gif": {"multi_frame", "mode_converted"},
    "one_pixel.png": {"tiny_upscaled"},
    "huge.jpg": {"reduced_on_decode"},
    "rotated.jpg": {"exif_rotated"},
}
# name -> problem expected (undecodable: skipped and listed)
SKIPPED: dict[str, str] = {
    "empty.jpg": "empty file",
    "text.jpg": "not a recognised image format",
    "html.png": "not a recognised image format",
    "random_bytes.jpg": "not a recognised image format",
    "truncated.jpg": "cannot decode image",
    "truncated.png": "cannot decode image",
    "header_only.jpg": "cannot decode image",
    "folder.jpg": "cannot decode image",
    "bomb.png": "too many pixels",
    "missing.jpg": "file not found",
}


@pytest.fixture(scope="module")
def image_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file per image case above."""
    d = tmp_path_factory.mktemp("zoo")
    noise_image(d / "ok.jpg")
    noise_image(d / "png_named.jpg", format="PNG")
    noise_image(d / "webp_named.jpg", format="WEBP")
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    pal.save(d / "palette.png")
    Image.new("RGBA", (40, 40), (255, 0, 0, 128)).save(d / "rgba.png")
    pal.putpixel((0, 0), 0)
    pal.save(d / "palette_transparent.png", transparency=0)
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    Image.new("L", (40, 40), 90).save(d / "grey.jpg")
    Image.new("I;16", (40, 40), 40000).save(d / "grey16.png")
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("RGB", (1, 1), (10, 20, 30)).save(d / "one_pixel.png")
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(d / "huge.jpg", quality=50)
    exif = Image.Exif()
    exif[0x0112] = 6
    noise_image(d / "rotated.jpg", exif=exif)

    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("hello, I am a caption file, not a JPEG\n")
    (d / "html.png").write_text("<!DOCTYPE html><title>404 Not Found</title>")
    (d / "random_bytes.jpg").write_bytes(np.random.default_rng(1).bytes(2048))
    for ext in ("jpg", "png"):
        full = noise_image(d / f"full.{ext}", (64, 64)).read_bytes()
        (d / f"truncated.{ext}").write_bytes(full[: len(full) // 2])
        (d / f"full.{ext}").unlink()
    (d / "header_only.jpg").write_bytes((d / "ok.jpg").read_bytes()[:200])
    (d / "folder.jpg").mkdir()
    bomb_png(d / "bomb.png")
    return d


def test_bad_images_skipped_odd_ones_converted_and_reported(image_zoo: Path, tiny_backbone: Backbone) -> None:
    names = sorted([*CONVERTED, *SKIPPED])
    paths = [str(image_zoo / n) for n in names]
    result = extract(paths, tiny_backbone, batch_size=4, workers=2, progress=False, on_error="skip")

    problems = {Path(p).name: problem for p, problem in result.errors}
    assert set(problems) == set(SKIPPED)
    for name, expected in SKIPPED.items():
        assert problems[name].startswith(expected), (name, problems[name])
    kinds: dict[str, set[str]] = {n: set() for n in CONVERTED}
    for p, note in result.notes:
        kinds[Path(p).name].add(note.split(":")[0])
    assert kinds == CONVERTED
    ok = {Path(p).name: good for p, good in zip(paths, result.ok_mask)}
    assert all(ok[n] for n in CONVERTED) and not any(ok[n] for n in SKIPPED)
    assert np.isfinite(result.features[result.ok_mask]).all() and np.isnan(result.features[~result.ok_mask]).all()

    report = extraction_report(result, [Path(n).stem for n in names], paths, max_bad_images=0.5)
    json.dumps(report)
    assert (report["images"], report["extracted"], report["skipped"]) == (23, 13, 10)
    assert {r["image_id"]: r["problem"][:12] for r in report["skipped_images"]} == {
        Path(n).stem: p[:12] for n, p in SKIPPED.items()
    }
    assert report["converted"] == {
        "exif_rotated": 1, "format_mismatch": 2, "mode_converted": 5, "multi_frame": 1,
        "reduced_on_decode": 1, "tiny_upscaled": 1, "transparency_flattened": 2,
    }
    assert report["converted_examples"]["reduced_on_decode"] == [
        f"{image_zoo / 'huge.jpg'}: 6000x4000 JPEG decoded at 750x500"
    ]


def test_bad_image_in_raise_mode_names_the_file(image_zoo: Path, tiny_backbone: Backbone) -> None:
    with pytest.raises(ValueError, match=r"truncated\.png: cannot decode image"):
        extract([image_zoo / "ok.jpg", image_zoo / "truncated.png"], tiny_backbone, 2, 0, progress=False)


def test_huge_photo_decodes_in_bounded_memory(image_zoo: Path) -> None:
    """A 6000x4000 JPEG (69 MiB as RGB) costs under 20 MiB of peak memory to load (measured: ~0;
    a PNG cannot be decoded at reduced scale: ~105 MiB, bounded by PIL's bomb guard)."""
    script = textwrap.dedent("""
        import resource, sys
        from captioner.features.images import read_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        read_image(sys.argv[1], 224)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grown // 1024 if sys.platform == "darwin" else grown)  # KiB (macOS counts bytes)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(image_zoo / "huge.jpg")],
                         capture_output=True, text=True, check=True).stdout
    assert int(out) < 20 * 1024, f"peak grew by {int(out) / 1024:.0f} MiB"


def test_bad_image_threshold_names_the_report(tmp_path: Path) -> None:
    report = tmp_path / "f.report.json"
    check_bad_images(1, 100, 0.01, report)
    with pytest.raises(ValueError, match=r"f\.report\.json: 2 of 100 images could not be read \(2\.0% > "
                                         r"features\.max_bad_images=1\.0%\)"):
        check_bad_images(2, 100, 0.01, report)
    with pytest.raises(ValueError, match=r"none of the 3 images could be read"):
        check_bad_images(3, 3, 1.0, report)


def write_flickr(root: Path, good: int = 6, bad: dict[str, bytes] | None = None) -> dict[str, str]:
    """A small Flickr8k-layout data set: `good` noise JPEGs plus `bad` files; id -> split."""
    images = root / "Flicker8k_Dataset"
    images.mkdir(parents=True)
    names = [f"g{i}.jpg" for i in range(good)]
    for i, n in enumerate(names):
        noise_image(images / n, seed=i)
    for n, data in (bad or {}).items():
        (images / n).write_bytes(data)
        names.append(n)
    split = {Path(n).stem: ("train" if k % 3 else "dev") for k, n in enumerate(names)}
    lines = [f"{i}.jpg#{c}\tA picture number {c} of {i} ." for i in split for c in range(5)]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for s in ("train", "dev"):
        (root / f"Flickr_8k.{s}Images.txt").write_text("".join(f"{i}.jpg\n" for i in split if split[i] == s))
    return split


def test_extract_features_stage_skips_reports_and_enforces_the_threshold(
    tmp_path: Path, tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    stage = load_stage("extract_features")
    jpeg = noise_image(tmp_path / "x.jpg").read_bytes()
    split = write_flickr(tmp_path / "f8k", good=7, bad={"cut.jpg": jpeg[: len(jpeg) // 2], "empty.jpg": b""})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stage, "load_backbone", lambda name, weights, spatial: tiny_backbone)
    monkeypatch.setattr(sys, "argv", ["extract_features.py", "--out", "data/features/tiny.parquet"])
    features = tmp_path / "data/features/tiny.parquet"
    report = tmp_path / "data/features/tiny.report.json"
    partial = tmp_path / "data/features/tiny.partial"

    def params(max_bad: float) -> SimpleNamespace:
        feat = SimpleNamespace(backbone="tiny", weights="none", batch_size=4, workers=1, max_bad_images=max_bad,
                               spatial="pooled", dtype="float32", engine="local", threads=2, actors=0)
        return SimpleNamespace(data=DataParams(root="f8k"), features=feat)

    # 2 of 9 unreadable > 10%: one line naming the report, which lists them; shards kept.
    monkeypatch.setattr(stage, "load_params", lambda: params(0.1))
    with pytest.raises(SystemExit) as exit_info:
        with reported_errors("extract_features"):
            stage.main()
    message = str(exit_info.value)
    assert message.startswith("extract_features: error: data/features/tiny.report.json: 2 of 9 images")
    assert "Traceback" not in message and not features.exists()
    listed = json.loads(report.read_text())
    assert {r["image_id"]: r["problem"].split(" (")[0] for r in listed["skipped_images"]} == {
        "cut": "cannot decode image", "empty": "empty file",
    }
    assert len(list(partial.glob("*/batch-*.parquet"))) == 3

    # Within the threshold: the good images' features, nothing of the bad ones; instant rerun.
    monkeypatch.setattr(stage, "load_params", lambda: params(0.25))
    stage.main()
    out = capsys.readouterr()
    assert "resumed an interrupted run: 9 images" in out.out
    assert "skipped f8k/Flicker8k_Dataset/cut.jpg: cannot decode image" in out.err
    ids, feats, meta = read_features(features)
    assert ids == sorted(i for i in split if i not in ("cut", "empty")) and feats.shape == (7, 3)
    assert meta["backbone"] == "tiny"
    assert json.loads(report.read_text())["skipped"] == 2
    assert not partial.exists()


def test_captions_of_images_without_features_are_dropped() -> None:
    ids = np.arange(12, dtype=np.int32).reshape(6, 2)
    images = np.array(["a", "b", "gone", "a", "gone", "c"])
    rows, missing = feature_rows(images, ["c", "a", "b"])
    assert rows.tolist() == [1, 2, -1, 1, -1, 0] and missing == ["gone"]
    kept_ids, kept_images, kept_rows, dropped = drop_without_features(ids, images, ["c", "a", "b"])
    assert kept_ids.tolist() == [[0, 1], [2, 3], [6, 7], [10, 11]]
    assert kept_images.tolist() == ["a", "b", "a", "c"] and kept_rows.tolist() == [1, 2, 1, 0]
    assert dropped == ["gone"]
    with pytest.raises(ValueError, match=r"feats\.parquet: none of the 2 captioned images has features"):
        drop_without_features(ids[:2], np.array(["x", "y"]), ["a"], "feats.parquet")


# images listed in a split but missing on disk: tests/unit/datasets/test_datasets.py::test_flickr8k_quirks
# (split_image_missing_on_disk) and the dvc test at the end (missing_on_disk == 1).


# ---------------------------------------------------------------- captions and split files

BASE = [f"{i}.jpg#{c}\tA caption {c} of {i} .".encode() for i in "abcd" for c in range(5)]


def _with(extra: list[bytes], drop: tuple[int, ...] = ()) -> bytes:
    return b"\n".join([line for k, line in enumerate(BASE) if k not in drop] + extra) + b"\n"


# name -> (token file bytes, report section, reason, count, check on the captions table)
CAPTION_CASES = {
    "line without a tab": (_with([b"just some words and no tab"]), "ignored", "line_without_tab", 1, None),
    "binary garbage line": (_with([b"\x00\x01\x02\xff garbage"]), "ignored", "line_without_tab", 1, None),
    "id without #n": (_with([b"a.jpg\tAn unnumbered caption ."], drop=(4,)), "repaired",
                      "id_without_caption_no", 1, lambda c: c["a", 4] == "An unnumbered caption ."),
    "bad caption number": (_with([b"a.jpg#x\tBad number ."]), "ignored", "bad_caption_number", 1, None),
    "not an image name": (_with([b"a.jpg.1#0\tOdd id ."]), "ignored", "not_an_image_name", 1, None),
    "more than 5 captions": (_with([b"a.jpg#5\tSix .", b"a.jpg#6\tSeven ."]), "noted", "more_than_5_captions", 1,
                             lambda c: len(c["a"]) == 7),
    "empty caption": (_with([b"b.jpg#5\t   "]), "ignored", "empty_caption", 1, None),
    "blank lines": (_with([b"", b"   ", b"\t"]), "ignored", "blank_line", 3, None),
    "CRLF line ends": (b"\r\n".join(BASE) + b"\r\n", "repaired", "crlf_line_end", 20,
                       lambda c: c["a", 0] == "A caption 0 of a ."),
    "no final newline": (b"\n".join(BASE), "ignored", None, 0, lambda c: c["d", 4] == "A caption 4 of d ."),
    "non-UTF-8 bytes": (_with([b"c.jpg#5\tA caf\xe9 ."]), "repaired", "non_utf8_line", 1,
                        lambda c: c["c", 5] == "A caf\ufffd ."),
    "UTF-8 byte-order mark": (b"\xef\xbb\xbf" + _with([]), "repaired", "utf8_bom", 1,
                              lambda c: c["a", 0] == "A caption 0 of a ."),
    "very long caption": (_with([b"d.jpg#5\t" + b"word " * 20000]), "ignored", None, 0,
                          lambda c: len(clean_caption(c["d", 5], 40).split()) == 40),
    "caption of an image in no split": (_with([b"zz.jpg#0\tNowhere ."]), "ignored",
                                        "caption_of_image_in_no_split", 1, None),
    "duplicate line": (_with([BASE[0]]), "ignored", "duplicate_line", 1, None),
    "conflicting caption number": (_with([b"a.jpg#0\tSomething else ."]), "ignored", "conflicting_caption_no", 1, None),
}


def write_small_flickr(root: Path, tokens: bytes, train: bytes = b"a.jpg\nb.jpg\n", dev: bytes = b"c.jpg\nd.jpg\n") -> Path:
    (root / "Flicker8k_Dataset").mkdir(parents=True)
    for i in "abcd":
        Image.new("RGB", (2, 2)).save(root / "Flicker8k_Dataset" / f"{i}.jpg")
    (root / "Flickr8k.token.txt").write_bytes(tokens)
    (root / "Flickr_8k.trainImages.txt").write_bytes(train)
    (root / "Flickr_8k.devImages.txt").write_bytes(dev)
    return root


@pytest.mark.parametrize("case", list(CAPTION_CASES))
def test_caption_file_faults(tmp_path: Path, case: str) -> None:
    tokens, section, reason, count, check = CAPTION_CASES[case]
    ds = load_flickr8k(write_small_flickr(tmp_path / "f", tokens), max_bad_fraction=0.5)
    if reason is None:
        assert ds.report["ignored"] == {} and ds.report["repaired"] == {}, ds.report
    else:
        assert ds.report[section][reason] == count, ds.report
        token = tmp_path / "f" / "Flickr8k.token.txt"
        example = ds.report["examples"][reason][0]
        assert example.startswith((f"{token}:", "a:", f"{token}: ")), example  # file:line (or the image)
    assert ds.images["image_id"].tolist() == ["a", "b", "c", "d"]
    if check is not None:
        assert check(ds.captions.set_index(["image_id", "caption_no"])["caption"])


def test_too_many_bad_caption_lines_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = write_small_flickr(tmp_path / "f", _with([b"junk"] * 3))
    with pytest.raises(ValueError, match=r"Flickr8k\.token\.txt: 3 of 23 lines are malformed \(13\.0% > "
                                         r"max_bad_fraction=10\.0%\)"):
        load_dataset(root, max_bad_fraction=0.1)
    assert len(load_dataset(root, max_bad_fraction=0.2).captions) == 20


# name -> (train split bytes, reason, count); c and d are in the dev file
SPLIT_CASES = {
    "entry that is not an image name": (b"a.jpg\nnot an image\nb.jpg\n", "bad_split_entry", 1),
    "duplicate entry": (b"a.jpg\na.jpg\nb.jpg\n", "duplicate_split_entry", 1),
    "image in several splits (the first file wins)": (b"a.jpg\nb.jpg\nc.jpg\n", "image_in_several_splits", 1),
    "image missing on disk": (b"a.jpg\nb.jpg\ngone.jpg\n", "split_image_missing_on_disk", 1),
    "CRLF, blank lines, no final newline": (b"a.jpg\r\n\r\nb.jpg", "blank_line", 1),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split_file_faults(tmp_path: Path, case: str) -> None:
    train, reason, count = SPLIT_CASES[case]
    ds = load_flickr8k(write_small_flickr(tmp_path / "f", _with([]), train=train), max_bad_fraction=0.5)
    assert ds.report["ignored"][reason] == count, ds.report
    in_train = "ab" + ("c" if b"c.jpg" in train else "")
    assert ds.images.set_index("image_id")["split"].to_dict() == {i: "train" if i in in_train else "dev" for i in "abcd"}


def test_too_many_bad_split_entries_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = write_small_flickr(tmp_path / "f", _with([]), train=b"a.jpg\nb.jpg\n???\n")
    with pytest.raises(ValueError, match=r"Flickr_8k\.trainImages\.txt: 1 of 3 lines are malformed"):
        load_dataset(root)


def test_clean_text_stops_without_a_train_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage = load_stage("clean_text")
    write_small_flickr(tmp_path / "f", _with([]), train=b"", dev=b"c.jpg\nd.jpg\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["clean_text.py", "--out", "data/text"])
    monkeypatch.setattr(stage, "load_params", lambda: SimpleNamespace(
        data=DataParams(root="f"), text=SimpleNamespace(min_count=1, max_words=40)))
    with pytest.raises(SystemExit, match=r"clean_text: error: f: no usable image in the train split"):
        with reported_errors("clean_text"):
            stage.main()
    assert not (tmp_path / "data/text").exists()


# ---------------------------------------------------------------- parameters
# More cases: tests/unit/config/test_params.py (unknown keys, types, beam width 0, unknown backbone, data root).

PARAM_CASES = [
    ("features: {batch_size: -8}", "features.batch_size", "greater than 0"),
    ("features: {backbone: resnet50}", "features.backbone", "efficientnet_lite0"),
    ("evaluate: {beam_width: 0}", "evaluate.beam_width", "greater than or equal to 1"),
    ("evaluate: {split: val}", "evaluate.split", "'train', 'dev' or 'test'"),
    ("train: {epochs: 0}", "train.epochs", "greater than 0"),
    ("train: {learning_rate: fast}", "train.learning_rate", "valid number"),
    ("text: {max_words: -1}", "text.max_words", "greater than 0"),
    ("data: {max_bad_fraction: 1.5}", "data.max_bad_fraction", "less than or equal to 1"),
    ("data: {layout: coco}", "data.layout", "'auto'"),
    ("scenes: {image_size: 8}", "scenes.image_size", "greater than or equal to 32"),
    ("sequences: {max_length: 2}", "sequences.max_length", "greater than or equal to 3"),
    ("model: {units: 0, embedding_dim: -1}", "model.embedding_dim", "greater than 0"),
    ("extras: {x: 1}", "extras", "unknown key"),
    ("train: {seed: 1, sed: 2}", "train.sed", "unknown key"),
    ("train: 5", "train", "valid dictionary"),
]


@pytest.mark.parametrize(("text", "key", "msg"), PARAM_CASES)
def test_bad_params_fail_fast_naming_the_key(tmp_path: Path, text: str, key: str, msg: str) -> None:
    (tmp_path / "params.yaml").write_text(text + "\n")
    with pytest.raises(ParamsError) as e:
        load_params(tmp_path / "params.yaml")
    assert f"  {key}: " in str(e.value) and msg in str(e.value), str(e.value)


def test_missing_data_root_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("data: {root: /no/such/data}\n")
    with pytest.raises(ParamsError, match=r"data\.root: /no/such/data does not exist"):
        check_data_root(load_params(tmp_path / "params.yaml"), tmp_path)


def test_a_stage_with_bad_params_prints_one_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("sequences: {max_length: 2, max_lenght: 9}\n")
    proc = subprocess.run([sys.executable, str(REPO / "stages/build_sequences.py")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("build_sequences: error: params.yaml: invalid parameters\n")
    assert "  sequences.max_length: Input should be greater than or equal to 3\n" in proc.stderr
    assert "  sequences.max_lenght: unknown key\n" in proc.stderr


# ---------------------------------------------------------------- killed writes

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from captioner.runtime.io import atomic_path
    from captioner.runtime.stage import exit_on_sigterm
    exit_on_sigterm()
    target, kind, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    with atomic_path(target) as tmp:
        if kind == "dir":
            tmp.mkdir()
            (tmp / "done.bin").write_bytes(b"new" * 1000)
            tmp = tmp / "half.bin"
        with open(tmp, "wb") as f:
            f.write(b"half-written")
            f.flush()
            ready.write_text("writing")
            time.sleep(60)
""")


def _old(target: Path, kind: str) -> None:
    if kind == "dir":
        target.mkdir()
        (target / "old.bin").write_bytes(b"old")
    else:
        target.write_bytes(b"old")


def _content(target: Path) -> bytes | list[str] | None:
    if target.is_dir():
        return sorted(p.name for p in target.iterdir())
    return target.read_bytes() if target.exists() else None


@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("had_old", [True, False])
def test_killed_mid_write_leaves_the_old_artifact_or_none(tmp_path: Path, kind: str, sig: int, had_old: bool) -> None:
    target, ready = tmp_path / "out" / "artifact", tmp_path / "ready"
    target.parent.mkdir()
    if had_old:
        _old(target, kind)
    before = _content(target)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), kind, str(ready)])
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "writer did not start"
        time.sleep(0.02)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == (-sig if sig == signal.SIGKILL else 128 + sig)
    assert _content(target) == before  # the old artifact, untouched, or none
    leftovers = stale_temporaries(target)
    assert bool(leftovers) == (sig == signal.SIGKILL)  # SIGTERM unwinds and cleans up
    with atomic_path(target) as tmp:  # the next write replaces it and removes the leftovers
        if kind == "dir":
            tmp.mkdir()
            tmp = tmp / "new.bin"
        tmp.write_bytes(b"new")
    assert _content(target) == (["new.bin"] if kind == "dir" else b"new") and stale_temporaries(target) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["artifact"]


# ---------------------------------------------------------------- resumable extraction


class Interrupt(RuntimeError):
    pass


def _failing_after(backbone: Backbone, n_batches: int) -> Backbone:
    """The backbone, but its preprocessing dies on batch n_batches + 1 (a kill mid-run)."""
    calls = {"n": 0}

    def preprocess(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > n_batches:
            raise Interrupt("killed")
        return backbone.preprocess(batch)

    return Backbone(backbone.name, backbone.input_size, backbone.feature_dim, backbone.model, preprocess)


def test_interrupted_extraction_resumes_bit_for_bit(tmp_path: Path, image_zoo: Path, tiny_backbone: Backbone) -> None:
    paths = [image_zoo / n for n in sorted(CONVERTED)] + [image_zoo / "empty.jpg"]  # 14 images, 5 batches
    ids = [p.stem for p in paths]
    reference = extract(paths, tiny_backbone, 3, 2, progress=False, on_error="skip")
    ok_ids = [i for i, good in zip(ids, reference.ok_mask) if good]
    write_features(tmp_path / "ref.parquet", ok_ids, reference.features[reference.ok_mask], {"backbone": "tiny"})

    shards = tmp_path / "partial" / extraction_key([str(p) for p in paths], {"backbone": "tiny", "batch_size": 3})
    with pytest.raises(Interrupt):
        extract(paths, _failing_after(tiny_backbone, 2), 3, 2, progress=False, on_error="skip", shards=shards)
    assert sorted(p.name for p in shards.iterdir()) == ["batch-000000.parquet", "batch-000001.parquet"]

    resumed = extract(paths, tiny_backbone, 3, 2, progress=False, on_error="skip", shards=shards)
    assert resumed.resumed == 6
    assert np.array_equal(resumed.features, reference.features, equal_nan=True)
    assert (resumed.errors, resumed.notes) == (reference.errors, reference.notes)
    write_features(tmp_path / "resumed.parquet", ok_ids, resumed.features[resumed.ok_mask], {"backbone": "tiny"})
    assert (tmp_path / "resumed.parquet").read_bytes() == (tmp_path / "ref.parquet").read_bytes()

    # A changed image invalidates its own shard only; an unreadable shard is recomputed.
    os.utime(paths[4], ns=(time.time_ns(), time.time_ns() + 10**9))
    shard_path(shards, 0).write_bytes(b"not parquet")
    again = extract(paths, tiny_backbone, 3, 2, progress=False, on_error="skip", shards=shards)
    assert again.resumed == 14 - 3 - 3
    assert np.array_equal(again.features, reference.features, equal_nan=True)
    # Shards of another batch size are not taken for this one's.
    other = extract(paths, tiny_backbone, 4, 0, progress=False, on_error="skip", shards=shards)
    assert other.resumed == 0 and np.array_equal(other.features, reference.features, equal_nan=True)


def test_extraction_is_reproducible_whatever_the_workers(image_zoo: Path, tiny_backbone: Backbone) -> None:
    paths = [image_zoo / n for n in sorted(CONVERTED)]
    runs = [extract(paths, tiny_backbone, 4, w, progress=False, prefetch=p).features for w, p in ((0, 1), (2, 2), (3, 1))]
    assert all(r.tobytes() == runs[0].tobytes() for r in runs)


def test_extraction_key_changes_with_images_and_config() -> None:
    key = extraction_key(["a.jpg", "b.jpg"], {"backbone": "x", "batch_size": 8})
    assert key == extraction_key(["a.jpg", "b.jpg"], {"batch_size": 8, "backbone": "x"})
    assert key != extraction_key(["a.jpg", "c.jpg"], {"backbone": "x", "batch_size": 8})
    assert key != extraction_key(["a.jpg", "b.jpg"], {"backbone": "x", "batch_size": 16})


# ---------------------------------------------------------------- safe loading
# The torch reader's allow-list against os.system/eval payloads (protocol 2):
# tests/unit/features/test_backbones.py::test_malicious_checkpoint_refused_and_nothing_runs; model vs
# vocabulary / feature length: tests/unit/model/test_model.py::test_save_load_roundtrip_and_mismatch_errors.


class _Payload:
    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _checkpoint(path: Path, main: object, protocol: int) -> Path:
    with path.open("wb") as f:
        for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}, main, []):
            pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("func", ["subprocess.call", "builtins.exec", "importlib.import_module", "os.popen"])
def test_checkpoint_with_any_other_global_is_refused(tmp_path: Path, protocol: int, func: str) -> None:
    marker = tmp_path / "pwned"
    module, name = func.rsplit(".", 1)
    target = getattr(importlib.import_module(module), name)
    arg = {"subprocess.call": ["touch", str(marker)], "builtins.exec": f"open({str(marker)!r}, 'w').close()",
           "importlib.import_module": "this", "os.popen": f"touch {marker}"}[func]
    ckpt = _checkpoint(tmp_path / "evil.pth", OrderedDict(w=_Payload(target, arg)), protocol)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth: refusing global"):
        read_state_dict(ckpt)
    assert not marker.exists()


def test_allowed_global_with_hostile_arguments_is_refused(tmp_path: Path) -> None:
    """torch._utils._rebuild_tensor_v2 is allowed, but only ever gets a storage from this reader."""
    text = "not a storage".encode()
    main = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(X" + struct.pack("<I", len(text)) + text
            + b"K\x00K\x01\x85K\x01\x85tR.")
    with (tmp_path / "forged.pth").open("wb") as f:
        for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(main)
        pickle.dump([], f, protocol=2)
    with pytest.raises(CheckpointError, match=r"forged\.pth: cannot read the main pickle .*tensor storage is str"):
        read_state_dict(tmp_path / "forged.pth")


def test_keras_model_with_code_is_refused(tmp_path: Path) -> None:
    import keras

    from captioner.model.build import load_model

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match=r"lambda\.keras: cannot load the model \(.*(unsafe|arbitrary code)"):
        load_model(str(tmp_path / "lambda.keras"))


def test_object_arrays_and_yaml_tags_and_bad_vocab_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", ids=np.zeros((1, 3), np.int32), image_ids=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_sequences(tmp_path / "s.npz")
    marker = tmp_path / "pwned"
    (tmp_path / "params.yaml").write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ParamsError, match="params.yaml: not valid YAML"):
        load_params(tmp_path / "params.yaml")
    assert not marker.exists()
    (tmp_path / "vocab.json").write_text(json.dumps({"tokens": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"vocab\.json: vocabulary must start with"):
        load_vocabulary(tmp_path / "vocab.json")


def test_nothing_in_the_code_unpickles() -> None:
    """No pickle.load / allow_pickle=True / torch.load outside the restricted torch reader."""
    risky = re.compile(r"pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\(|yaml\.load\(|yaml\.unsafe_load|marshal\.loads?\(")
    hits = [f"{p.relative_to(REPO)}:{n}" for p in [*REPO.glob("src/**/*.py"), *REPO.glob("stages/*.py")]
            for n, line in enumerate(p.read_text().splitlines(), 1) if risky.search(line)]
    assert hits == []



