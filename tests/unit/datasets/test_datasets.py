"""Readers of the Flickr8k on-disk layouts (flickr8k, kaggle, karpathy) -> one tidy Dataset."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from captioner.datasets.readers import detect_layout, load_dataset
from captioner.datasets.common import assign_splits, split_counts, validate_fractions
from captioner.datasets.flickr8k import load_flickr8k
from tests.helpers.datasets import check_tidy
from tests.helpers.project import require

REAL_FLICKR8K = Path(__file__).resolve().parents[3].parent / "shared" / "flickr8k"


def make_images(folder: Path, names: Iterable[str]) -> None:
    """Write a 1x1 JPEG for each file name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / name)


def token_lines(ids: Iterable[str], n: int = 5) -> list[str]:
    return [f"{i}.jpg#{k}\tA caption {k} of {i} ." for i in ids for k in range(n)]


def write_flickr(
    root: Path,
    train: list[str],
    dev: list[str],
    test: list[str] | None = None,
    on_disk: list[str] | None = None,
    image_dir: str = "Flicker8k_Dataset",
    tokens: bytes | None = None,
) -> Path:
    """A Flickr8k-layout directory; captioned images = all listed ones."""
    root.mkdir(parents=True, exist_ok=True)
    everything = train + dev + (test or [])
    make_images(root / image_dir, [f"{i}.jpg" for i in (everything if on_disk is None else on_disk)])
    if tokens is None:
        tokens = ("\n".join(token_lines(everything)) + "\n").encode()
    (root / "Flickr8k.token.txt").write_bytes(tokens)
    for split, ids in (("train", train), ("dev", dev), ("test", test)):
        if ids is not None:
            (root / f"Flickr_8k.{split}Images.txt").write_text("".join(f"{i}.jpg\n" for i in ids))
    return root


# ----------------------------------------------------------------- flickr8k


def test_flickr8k_clean_layout(tmp_path: Path) -> None:
    root = write_flickr(tmp_path / "f", ["t1", "t2", "t3"], ["d1"], ["x1"])
    ds = load_dataset(root)
    check_tidy(ds)
    assert ds.layout == "flickr8k"
    assert ds.images.groupby("split").size().to_dict() == {"train": 3, "dev": 1, "test": 1}
    assert (ds.captions.groupby("image_id").size() == 5).all()
    assert list(ds.images["image_id"]) == ["t1", "t2", "t3", "d1", "x1"]  # train, dev, test order
    assert ds.captions.iloc[0].to_dict() == {
        "image_id": "t1", "split": "train", "caption_no": 0, "caption": "A caption 0 of t1 .",
    }
    assert ds.report["ignored"] == {} and ds.report["repaired"] == {}
    assert ds.report["kept"]["captions"] == 25


@pytest.mark.parametrize("image_dir", ["Flickr8k_Dataset", "Images"])
def test_flickr8k_image_folder_names(tmp_path: Path, image_dir: str) -> None:
    ds = load_dataset(write_flickr(tmp_path / "f", ["a"], ["b"], image_dir=image_dir))
    assert ds.report["image_dir"] == image_dir
    assert set(ds.images["split"]) == {"train", "dev"}  # no test file: no test split


def test_flickr8k_quirks(tmp_path: Path) -> None:
    lines = [
        b"a.jpg#0\tA dog runs .\r",  # CRLF
        b"a.jpg#1\tA dog is running",
        b"",  # blank line
        b"a.jpg#2\tA caf\xe9 dog .",  # Latin-1 byte: not UTF-8
        b"a.jpg\tA dog without a number .",  # no #n -> numbered 3
        b"a.jpg#1\tA dog is running",  # exact duplicate
        b"a.jpg#0\tSomething else",  # conflicting duplicate id
        b"this line has no tab at all",
        b"b.jpg#0\t   ",  # empty caption
        b"b.jpg#x\tBad number",
        b"b.jpg#0\tA cat .",
        b"b.jpg#1 A cat with a space separator .",  # no tab, but clearly keyed
        b"c.jpg.1#0\tAn odd id",  # x.jpg.1#0
        b"nosplit.jpg#0\tAn image in no split and not on disk",
        b"nosplit.jpg#1\tIts second caption",
        b"gone.jpg#0\tIn a split but missing on disk",
        b"d.jpg#0\tDev image, no final newline",
    ]
    root = write_flickr(
        tmp_path / "f", ["a", "b", "gone", "e"], ["d"], on_disk=["a", "b", "d", "e"],
        tokens=b"\n".join(lines),
    )
    (root / "Flickr_8k.trainImages.txt").write_bytes(b"a.jpg\r\nb.jpg\r\n\r\ngone.jpg\r\nb.jpg\r\ne.jpg")
    (root / "Flickr_8k.devImages.txt").write_text("d.jpg\na.jpg\n")
    ds = load_flickr8k(root, max_bad_fraction=0.5)
    check_tidy(ds)
    caps = ds.captions.set_index(["image_id", "caption_no"])["caption"]
    assert caps["a", 0] == "A dog runs ."
    assert caps["a", 2] == "A caf\ufffd dog ."
    assert caps["a", 3] == "A dog without a number ."
    assert caps["b", 1] == "A cat with a space separator ."
    assert ds.images.set_index("image_id")["split"].to_dict() == {"a": "train", "b": "train", "d": "dev"}
    ign, rep = ds.report["ignored"], ds.report["repaired"]
    assert ign == {
        "blank_line": 2,
        "duplicate_line": 1,
        "conflicting_caption_no": 1,
        "line_without_tab": 1,
        "empty_caption": 1,
        "bad_caption_number": 1,
        "not_an_image_name": 1,
        "caption_of_image_in_no_split": 2,
        "image_in_no_split": 1,
        "caption_of_image_missing_on_disk": 1,
        "split_image_missing_on_disk": 1,
        "split_image_without_captions": 1,
        "duplicate_split_entry": 1,
        "image_in_several_splits": 1,
    }
    assert rep == {"crlf_line_end": 6, "non_utf8_line": 1, "id_without_caption_no": 1}
    token = root / "Flickr8k.token.txt"
    assert ds.report["examples"]["line_without_tab"] == [f"{token}:8: 'this line has no tab at all'"]
    assert ds.report["examples"]["not_an_image_name"] == [f"{token}:13: 'c.jpg.1'"]
    assert ds.report["examples"]["non_utf8_line"][0].startswith(f"{token}:4: ")
    assert ds.report["examples"]["image_in_several_splits"][0].startswith(
        f"{root / 'Flickr_8k.devImages.txt'}:2: a.jpg already in train"
    )


def test_flickr8k_examples_are_capped(tmp_path: Path) -> None:
    tokens = "\n".join(token_lines(["a"]) + [f"junk {k}" for k in range(30)] + token_lines(["b"] * 20))
    root = write_flickr(tmp_path / "f", ["a"], [], tokens=tokens.encode())
    ds = load_flickr8k(root, max_bad_fraction=0.5)
    assert ds.report["ignored"]["line_without_tab"] == 30
    assert len(ds.report["examples"]["line_without_tab"]) == 20


def test_flickr8k_too_many_bad_lines(tmp_path: Path) -> None:
    tokens = "\n".join(token_lines(["a", "b"]) + ["garbage"] * 2).encode()
    root = write_flickr(tmp_path / "f", ["a", "b"], [], tokens=tokens)
    with pytest.raises(ValueError, match=r"Flickr8k\.token\.txt: 2 of 12 lines are malformed"):
        load_dataset(root)
    assert len(load_dataset(root, max_bad_fraction=0.2).images) == 2
    (root / "Flickr_8k.devImages.txt").write_text("not an image\n")
    with pytest.raises(ValueError, match=r"Flickr_8k\.devImages\.txt: 1 of 1"):
        load_flickr8k(root, max_bad_fraction=0.2)


def test_flickr8k_without_split_files(tmp_path: Path) -> None:
    ids = [f"i{k}" for k in range(8)]
    root = write_flickr(tmp_path / "f", ids, [])
    (root / "Flickr_8k.trainImages.txt").unlink()
    (root / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no split file; looked for Flickr_8k.trainImages.txt"):
        load_dataset(root)
    ds = load_dataset(root, split_fractions={"train": 0.75, "dev": 0.25}, seed=3)
    assert ds.images.groupby("split").size().to_dict() == {"train": 6, "dev": 2}


def test_flickr8k_missing_image_folder(tmp_path: Path) -> None:
    root = tmp_path / "f"
    root.mkdir()
    (root / "Flickr8k.token.txt").write_text("a.jpg#0\tx\n")
    with pytest.raises(FileNotFoundError, match="no image folder; looked for Flicker8k_Dataset, "):
        load_dataset(root)


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    root = write_flickr(tmp_path / "f", ["a"], [], on_disk=[], tokens=b"b.jpg#0\tA caption\n")
    with pytest.raises(ValueError, match="no image is at once captioned, in a split and on disk"):
        load_dataset(root)


# ----------------------------------------------------------------- kaggle


def write_kaggle(root: Path, ids: list[str], on_disk: list[str] | None = None) -> Path:
    make_images(root / "Images", [f"{i}.jpg" for i in (ids if on_disk is None else on_disk)])
    rows = ["image,caption"] + [f"{i}.jpg,A caption {k} of {i} ." for i in ids for k in range(5)]
    (root / "captions.txt").write_text("\n".join(rows) + "\n")
    return root


def test_kaggle_layout_and_deterministic_split(tmp_path: Path) -> None:
    ids = [f"img{k:02d}" for k in range(16)]
    root = write_kaggle(tmp_path / "k", ids)
    ds = load_dataset(root, seed=1)
    check_tidy(ds)
    assert ds.layout == "kaggle"
    assert ds.images.groupby("split").size().to_dict() == {"train": 12, "dev": 2, "test": 2}
    assert (ds.captions.groupby("image_id")["caption_no"].apply(list) == [[0, 1, 2, 3, 4]] * 16).all()
    again = load_dataset(root, seed=1)
    pd.testing.assert_frame_equal(ds.images, again.images)
    other = load_dataset(root, seed=2)
    assert not ds.images["image_id"].equals(other.images["image_id"])
    custom = load_dataset(root, seed=1, split_fractions={"train": 0.5, "test": 0.5})
    assert custom.images.groupby("split").size().to_dict() == {"train": 8, "test": 8}
    # the split does not depend on the row order of the file
    text = (root / "captions.txt").read_text().splitlines()
    (root / "captions.txt").write_text("\n".join([text[0], *reversed(text[1:])]))
    flipped = load_dataset(root, seed=1)
    assert flipped.images.set_index("image_id")["split"].equals(ds.images.set_index("image_id")["split"])


def test_kaggle_quirks(tmp_path: Path) -> None:
    root = tmp_path / "k"
    make_images(root / "Images", ["a.jpg", "b.jpg"])
    (root / "captions.txt").write_bytes(
        b"image,caption\r\n"
        b'a.jpg,"A dog, running ."\r\n'
        b"a.jpg,A dog , unquoted comma .\r\n"
        b"a.jpg,A dog , unquoted comma .\r\n"  # duplicate
        b"\r\n"
        b"a.jpg,\r\n"  # empty caption
        b"b.jpg,A cat .\r\n"
        b"missing.jpg,Not on disk"
    )
    ds = load_dataset(root, split_fractions={"train": 1.0}, max_bad_fraction=0.5)
    check_tidy(ds)
    caps = ds.captions.set_index(["image_id", "caption_no"])["caption"]
    assert caps["a", 0] == "A dog, running ."
    assert caps["a", 1] == "A dog , unquoted comma ."
    assert ds.report["ignored"] == {
        "blank_line": 1,
        "duplicate_line": 1,
        "empty_caption": 1,
        "caption_of_image_missing_on_disk": 1,
    }
    assert ds.report["repaired"] == {"crlf_line_end": 7}


def test_split_helpers() -> None:
    assert split_counts(8000, {"train": 0.75, "dev": 0.125, "test": 0.125}) == {
        "train": 6000, "dev": 1000, "test": 1000,
    }
    assert sum(split_counts(7, {"train": 0.7, "dev": 0.15, "test": 0.15}).values()) == 7
    a = assign_splits(["c", "a", "b", "d"], {"train": 0.5, "dev": 0.5}, seed=0)
    assert a == assign_splits(["d", "b", "a", "c"], {"train": 0.5, "dev": 0.5}, seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        validate_fractions({"train": 0.7, "dev": 0.2})
    with pytest.raises(ValueError, match="unknown split name"):
        validate_fractions({"train": 0.5, "val": 0.5})


# ----------------------------------------------------------------- karpathy


def test_karpathy_layout(tmp_path: Path) -> None:
    root = tmp_path / "kp"
    make_images(root / "Images", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    sent = lambda raw: {"raw": raw, "tokens": raw.lower().split()}  # noqa: E731
    data = {
        "dataset": "flickr8k",
        "images": [
            {"filename": "a.jpg", "split": "train", "sentences": [sent("A dog ."), sent("A pup .")]},
            {"filename": "b.jpg", "split": "restval", "sentences": [{"tokens": ["a", "cat"]}]},
            {"filename": "c.jpg", "split": "val", "sentences": [sent("A car ."), {"raw": " "}]},
            {"filename": "d.jpg", "split": "test", "sentences": [sent("A bird .")]},
            {"filename": "e.jpg", "split": "test", "sentences": [sent("Not on disk .")]},
            {"filename": "a.jpg", "split": "test", "sentences": [sent("Again .")]},
        ],
    }
    (root / "dataset_flickr8k.json").write_text(json.dumps(data))
    ds = load_dataset(root)
    check_tidy(ds)
    assert ds.layout == "karpathy"
    assert ds.images.set_index("image_id")["split"].to_dict() == {
        "a": "train", "b": "train", "c": "dev", "d": "test",
    }
    caps = ds.captions.set_index(["image_id", "caption_no"])["caption"]
    assert caps["b", 0] == "a cat" and caps["a", 1] == "A pup ."
    assert ds.report["ignored"] == {
        "duplicate_image_entry": 1,
        "empty_caption": 1,
        "caption_of_image_missing_on_disk": 1,
        "split_image_missing_on_disk": 1,
    }
    data["images"].append({"filename": "f.jpg", "split": "holdout", "sentences": []})
    (root / "dataset_flickr8k.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"dataset_flickr8k\.json: 1 of 7 image entries are malformed"):
        load_dataset(root)
    (root / "dataset_flickr8k.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object with an 'images' list"):
        load_dataset(root)


# ----------------------------------------------------------------- detection


def test_detect_layout(tmp_path: Path) -> None:
    assert detect_layout(write_flickr(tmp_path / "f", ["a"], [])) == "flickr8k"
    assert detect_layout(write_kaggle(tmp_path / "k", ["a"])) == "kaggle"
    (tmp_path / "kp").mkdir()
    (tmp_path / "kp" / "dataset_flickr8k.json").write_text("{}")
    assert detect_layout(tmp_path / "kp") == "karpathy"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"looked for Flickr8k\.token\.txt \(flickr8k\), "):
        load_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown layout 'coco'"):
        load_dataset(tmp_path / "f", "coco")
    assert load_dataset(tmp_path / "k", "kaggle", split_fractions={"test": 1.0}).layout == "kaggle"


# ----------------------------------------------------------------- the real data


def test_real_flickr8k() -> None:
    require((REAL_FLICKR8K / "Flickr8k.token.txt").is_file(),
            f"real Flickr8k at {REAL_FLICKR8K} (the repo's sibling ../shared/flickr8k)")
    start = time.perf_counter()
    ds = load_dataset(REAL_FLICKR8K)
    elapsed = time.perf_counter() - start
    check_tidy(ds)
    assert ds.layout == "flickr8k"
    splits = ds.images.groupby("split").size().to_dict()
    assert splits["train"] == 6000 and splits["dev"] == 1000
    assert splits.get("test", 1000) == 1000  # held back in the shared copy
    assert (ds.captions.groupby("image_id").size() == 5).all()
    assert ds.report["ignored"]["not_an_image_name"] == 5  # 2258277193_586949ec62.jpg.1#0..4
    assert elapsed < 5, f"loading took {elapsed:.1f} s"
