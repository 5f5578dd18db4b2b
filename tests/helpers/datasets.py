"""Checks every loaded data set satisfies, and small copies of Karpathy's split files in their
real formats (with one missing image and one malformed entry)."""

from __future__ import annotations

import json
from pathlib import Path

from captioner.datasets.karpathy import VARIANTS
from captioner.datasets.readers import Dataset
from captioner.datasets.scenes import make_image

def check_tidy(ds: Dataset) -> None:
    """Invariants every loaded Dataset satisfies."""
    assert list(ds.captions.columns) == ["image_id", "split", "caption_no", "caption"]
    assert list(ds.images.columns) == ["image_id", "split", "path"]
    assert set(ds.captions["split"]) <= {"train", "dev", "test"}
    assert ds.captions["caption_no"].dtype == "int64"
    assert ds.images["image_id"].is_unique
    assert set(ds.captions["image_id"]) == set(ds.images["image_id"])
    assert not ds.captions.duplicated(["image_id", "caption_no"]).any()
    assert (ds.captions["caption"].str.strip() != "").all()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in ds.images["path"])
    merged = ds.captions.merge(ds.images, on="image_id", suffixes=("", "_img"))
    assert (merged["split"] == merged["split_img"]).all()
    json.dumps(ds.report)  # JSON-ready


SPLIT_SIZES = {"train": 12, "restval": 6, "val": 7, "test": 5}



EXPECTED = {"train": 18, "dev": 7, "test": 5}



N_GOOD = sum(SPLIT_SIZES.values())



N_ENTRIES = N_GOOD + 2  # + one entry whose image is not on disk, + one malformed entry



MAX_BAD = 0.05  # 1 malformed of 32 entries is over the default 1%



FLICKR_FOLDERS = {"flickr8k": "Flicker8k_Dataset", "flickr30k": "flickr30k-images"}



def file_name(variant: str, i: int, split: str) -> tuple[str, str]:
    """(COCO filepath or "", file name) of image i, named like the real files."""
    if variant == "coco":  # Karpathy's val/test/restval images all come from val2014
        folder = "train2014" if split == "train" else "val2014"
        return folder, f"COCO_{folder}_{100000 + i:012d}.jpg"
    if variant == "flickr30k":
        return "", f"{1000092795 + i}.jpg"
    return "", f"{1000268201 + i}_{i:04x}b08cb0e.jpg"



def write_karpathy(root: Path, variant: str, image_base: str = "") -> dict:
    """A small copy of Karpathy's `variant` layout at `root` (images drawn by the scenes
    generator); returns what a reader must find: entry names by split, the missing image's
    entry, the malformed entry's index."""
    rows: list[tuple[str, str, str, list[str], bytes]] = []  # split, folder, name, captions, jpeg
    i = 0
    for split, n in SPLIT_SIZES.items():
        for _ in range(n):
            _, jpeg, captions, _ = make_image(i, seed=5, image_size=32)
            rows.append((split, *file_name(variant, i, split), captions, jpeg))
            i += 1
    images, sentid = [], 0
    for imgid, (split, folder, name, captions, jpeg) in enumerate(rows):
        sentences = []
        for raw in captions:
            tokens = raw.lower().rstrip(" .!").split()
            sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        entry = {"sentids": [s["sentid"] for s in sentences], "filename": name, "imgid": imgid,
                 "split": split, "sentences": sentences}
        if variant == "coco":
            entry = {"filepath": folder, **entry, "cocoid": 100000 + imgid}
            target = root / image_base / folder / name
        else:
            target = root / FLICKR_FOLDERS[variant] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(jpeg)
        images.append(entry)
    # an image listed in train but not on disk, and an entry without sentences
    missing = json.loads(json.dumps(images[0]))
    missing_folder, missing_name = file_name(variant, 900, "train")
    missing.update(filename=missing_name, imgid=len(images))
    if variant == "coco":
        missing.update(filepath=missing_folder, cocoid=100900)
    images.insert(3, missing)
    malformed = {k: v for k, v in images[10].items() if k != "sentences"}
    malformed["filename"] = file_name(variant, 901, "val")[1]
    if variant == "coco":
        malformed["filepath"] = "val2014"
    images.insert(20, malformed)
    json_file = VARIANTS[variant].json_file
    (root / json_file).write_text(json.dumps({"images": images, "dataset": variant}))
    return {"json": root / json_file, "rows": rows, "missing": (missing_folder, missing_name),
            "malformed_index": 20}

