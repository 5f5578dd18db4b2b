"""Karpathy's three split files (dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json)
on small generated copies in their real formats: the reader (restval folded into train, COCO's
`filepath` sub-folders, one missing image and one malformed entry counted) and the text stages
on the Flickr copies (the whole DAG on the COCO copy: tests/system/test_karpathy.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from captioner.datasets.readers import detect_layout, load_dataset
from captioner.datasets.karpathy import load_karpathy
from captioner.datasets.sequences import load_sequences
from tests.helpers.datasets import (
    EXPECTED, FLICKR_FOLDERS, MAX_BAD, N_ENTRIES, N_GOOD, check_tidy, file_name, write_karpathy,
)
from tests.helpers.project import REPO, set_params

# Karpathy split -> how many good image entries; restval is folded into train.
@pytest.mark.parametrize(("variant", "image_base"),
                         [("flickr8k", ""), ("flickr30k", ""), ("coco", ""), ("coco", "images")])
def test_reader(tmp_path: Path, variant: str, image_base: str) -> None:
    root = tmp_path / variant
    made = write_karpathy(root, variant, image_base)
    assert detect_layout(root) == "karpathy"
    with pytest.raises(ValueError, match=rf"{made['json'].name}: 1 of {N_ENTRIES} image entries are malformed"):
        load_dataset(root)  # the default max_bad_fraction (1%), as for the Flickr8k files

    ds = load_dataset(root, max_bad_fraction=MAX_BAD)
    check_tidy(ds)
    assert ds.layout == "karpathy" and ds.report["variant"] == variant
    assert ds.report["captions_file"] == made["json"].name
    assert ds.images.groupby("split").size().to_dict() == EXPECTED
    assert ds.report["kept"]["captions"] == 5 * N_GOOD
    assert (ds.captions.groupby("image_id").size() == 5).all()
    # every entry kept, in its split, at its own file (COCO: under its filepath sub-folder)
    want = {}
    for split, folder, name, captions, _ in made["rows"]:
        base = root / image_base / folder if variant == "coco" else root / FLICKR_FOLDERS[variant]
        want[Path(name).stem] = ({"restval": "train", "val": "dev"}.get(split, split), base / name, captions[0])
    got = ds.images.set_index("image_id")
    assert set(got.index) == set(want)
    for image_id, (split, path, first_caption) in want.items():
        assert got.loc[image_id, "split"] == split
        assert Path(got.loc[image_id, "path"]) == path.resolve() and path.is_file()
    first = ds.captions.set_index(["image_id", "caption_no"])["caption"]
    assert all(first[i, 0] == c for i, (_, _, c) in want.items())
    if variant == "coco":
        folders = {Path(p).parent.name for p in ds.images["path"]}
        assert folders == {"train2014", "val2014"}
        assert ds.report["image_dir"] == (image_base or ".")
        assert got.loc["COCO_train2014_000000100000", "split"] == "train"
        assert got.loc["COCO_val2014_000000100012", "split"] == "train"  # restval
    # the problems: one missing image (5 captions dropped with it) and one malformed entry
    ignored = ds.report["ignored"]
    assert ignored == {"malformed_entry": 1, "split_image_missing_on_disk": 1,
                       "caption_of_image_missing_on_disk": 5}
    examples = ds.report["examples"]
    assert examples["malformed_entry"] == [
        f"{made['json']}:images[{made['malformed_index']}]: "
        + (f"'val2014'/'{file_name(variant, 901, 'val')[1]}'" if variant == "coco"
           else repr(file_name(variant, 901, "val")[1]))
        + ": no sentences list"
    ]
    folder, name = made["missing"]
    where = root / image_base / folder / name if variant == "coco" else root / FLICKR_FOLDERS[variant] / name
    assert examples["split_image_missing_on_disk"] == [f"train: {Path(name).stem}: {where}"]
    assert examples["caption_of_image_missing_on_disk"][0].startswith(f"{made['json']}:images[3].sentences[0]")


def test_entry_problems_and_folders(tmp_path: Path) -> None:
    """Every kind of malformed entry counts towards max_bad_fraction and is named; several
    split files in one folder pick the one with images; a whole missing COCO folder is only
    missing images."""
    root = tmp_path / "coco"
    write_karpathy(root, "coco")
    path = root / "dataset_coco.json"
    data = json.loads(path.read_text())
    good = data["images"][0]
    data["images"] += [
        [1, 2],  # not an object
        {k: v for k, v in good.items() if k != "filename"},
        {**good, "filename": "notes.txt"},
        {**good, "split": "holdout"},
        {**good, "filepath": "../elsewhere"},
        {k: v for k, v in good.items() if k != "filepath"},
    ]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"dataset_coco\.json: 7 of {N_ENTRIES + 6} image entries"):
        load_karpathy(root, max_bad_fraction=0.1)
    ds = load_karpathy(root, max_bad_fraction=0.25)
    assert ds.report["ignored"]["malformed_entry"] == 6 and ds.report["ignored"]["unknown_split"] == 1
    details = [e.split(": ", 1)[1] for e in ds.report["examples"]["malformed_entry"]]
    assert details[1:] == ["list", "'train2014'/None: no image file name", "'train2014'/'notes.txt': no image file name",
                           "'../elsewhere'/'COCO_train2014_000000100000.jpg': no filepath folder",
                           "None/'COCO_train2014_000000100000.jpg': no filepath folder"]
    # no train2014 on disk: its images are missing, the val2014 ones are read
    shutil.rmtree(root / "train2014")
    ds = load_karpathy(root, max_bad_fraction=0.25)
    assert ds.images.groupby("split").size().to_dict() == {"train": 6, "dev": 7, "test": 5}
    assert ds.report["ignored"]["split_image_missing_on_disk"] == 13
    shutil.rmtree(root / "val2014")
    with pytest.raises(FileNotFoundError, match=r"no image folder; looked for .*/train2014, .*/val2014"):
        load_karpathy(root, max_bad_fraction=0.25)
    # Karpathy's zip holds all three files: the one whose images are there is read
    write_karpathy(root, "flickr30k")
    assert load_dataset(root, max_bad_fraction=MAX_BAD).report["variant"] == "flickr30k"
    write_karpathy(root, "flickr8k")
    with pytest.raises(ValueError, match="several Karpathy split files"):
        load_dataset(root)
    assert load_karpathy(root, variant="flickr8k", max_bad_fraction=MAX_BAD).report["variant"] == "flickr8k"


def stage(script: str, *args: str, cwd: Path) -> str:
    """Run one stage script of the repo with this Python in `cwd` (its params.yaml)."""
    proc = subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=cwd,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", ["flickr8k", "flickr30k"])
def test_text_stages_on_flickr_copies(tmp_path: Path, variant: str) -> None:
    """clean_text and build_sequences read the Flickr copies through data.root."""
    data_root = tmp_path / variant
    write_karpathy(data_root, variant)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    set_params(work, {"data": {"root": str(data_root), "max_bad_fraction": MAX_BAD}})
    stage("clean_text.py", "--out", "data/text", cwd=work)
    stage("build_sequences.py", "--text", "data/text", "--out", "data/sequences", cwd=work)
    report = json.loads((work / "data/text/report.json").read_text())
    assert report["layout"] == "karpathy" and report["reader"]["variant"] == variant
    assert report["images"] == EXPECTED
    assert report["captions"] == {s: 5 * n for s, n in EXPECTED.items()}
    assert report["reader"]["ignored"]["malformed_entry"] == 1
    assert report["reader"]["ignored"]["split_image_missing_on_disk"] == 1
    images = pd.read_parquet(work / "data/text/images.parquet")
    assert all((work / p).is_file() for p in images["path"])
    for split, n in EXPECTED.items():
        ids, image_ids = load_sequences(work / f"data/sequences/{split}.npz")
        assert len(ids) == 5 * n and len(set(image_ids)) == n


