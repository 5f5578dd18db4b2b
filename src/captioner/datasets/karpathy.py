"""Reader for Karpathy's split files of Flickr8k, Flickr30k and MS-COCO (one reader, one small
table per variant).

    <root>/dataset_flickr8k.json    images in Flicker8k_Dataset/ (or Images/, Flickr8k_Dataset/)
    <root>/dataset_flickr30k.json   images in flickr30k-images/ (or Images/, flickr30k_images/)
    <root>/dataset_coco.json        images in <root>/<filepath>/<filename>
                                    (or <root>/images/<filepath>/<filename>), filepath being
                                    train2014 or val2014
        {"images": [{"filename", "split", "sentences": [{"raw", "tokens", ...}], "imgid",
                     "sentids", "filepath" and "cocoid" (coco only)}]}

Splits map train->train, restval->train, val->dev, test->test. The image id is the file name
without its extension (`COCO_val2014_000000391895` for COCO: unique across its sub-folders,
as the name repeats the folder). A sentence's caption is its `raw` text (its joined `tokens`
when `raw` is missing); caption_no is its index in the list. An entry that is not an object,
has no file name or no `sentences` list, has an unknown split or (COCO) no plain `filepath`
folder name is malformed: counted, exemplified with `<json>:images[i]`, and more than
`max_bad_fraction` of them is an error, as for the Flickr8k files. Images missing on disk are
counted by `assemble` with the path they were looked for at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.datasets.common import (
    DEFAULT_MAX_BAD_FRACTION,
    Dataset,
    ProblemReport,
    RawCaption,
    assemble,
    check_bad_fraction,
    files_on_disk,
    find_dir,
    image_id_of,
)
from captioner.runtime.io import read_json

__all__ = [
    "JSON_FILES", "SPLIT_MAP", "VARIANTS", "Variant", "find_image_dir", "load_karpathy", "locate_images",
    "parse_entries", "plain_folder", "sentence_text", "variant_of",
]

SPLIT_MAP: Mapping[str, str] = {"train": "train", "restval": "train", "val": "dev", "test": "test"}


@dataclass(frozen=True)
class Variant:
    """One Karpathy split file: its name and where its images are.

    image_dirs: candidate folders under the root, first existing wins. With `sub_folders`
    (COCO) each entry's `filepath` names a sub-folder of that folder ("." = the root itself).
    """

    name: str
    json_file: str
    image_dirs: tuple[str, ...]
    sub_folders: bool = False


VARIANTS: Mapping[str, Variant] = {
    "flickr8k": Variant("flickr8k", "dataset_flickr8k.json", ("Flicker8k_Dataset", "Images", "Flickr8k_Dataset")),
    "flickr30k": Variant("flickr30k", "dataset_flickr30k.json", ("flickr30k-images", "Images", "flickr30k_images")),
    "coco": Variant("coco", "dataset_coco.json", (".", "images"), sub_folders=True),
}
JSON_FILES: tuple[str, ...] = tuple(v.json_file for v in VARIANTS.values())


def sentence_text(sentence: Any) -> str:
    """Raw caption of one sentence entry ('' if it has neither `raw` nor `tokens`)."""
    if not isinstance(sentence, dict):
        return ""
    raw = sentence.get("raw")
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    tokens = sentence.get("tokens")
    if isinstance(tokens, list):
        return " ".join(str(t) for t in tokens).strip()
    return ""


def plain_folder(name: Any) -> str | None:
    """`name` if it is one plain folder name (no separator, not `.`/`..`), else None."""
    if not isinstance(name, str):
        return None
    name = name.strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        return None
    return name


def parse_entries(
    path: Path,
    entries: list[Any],
    split_map: Mapping[str, str],
    report: ProblemReport,
    max_bad_fraction: float,
    sub_folders: bool = False,
) -> tuple[list[RawCaption], dict[str, str], dict[str, tuple[str, str]]]:
    """Captions, image id -> split and image id -> (sub-folder or "", file name) from the
    JSON's `images` list; problems go to `report`."""
    captions: list[RawCaption] = []
    split_of: dict[str, str] = {}
    file_of: dict[str, tuple[str, str]] = {}
    n_bad = 0
    for i, entry in enumerate(entries):
        loc = f"{path}:images[{i}]"
        if not isinstance(entry, dict):
            n_bad += 1
            report.ignore("malformed_entry", loc, type(entry).__name__)
            continue
        name = entry.get("filename")
        image_id = image_id_of(name) if isinstance(name, str) else None
        sentences = entry.get("sentences")
        folder = plain_folder(entry.get("filepath")) if sub_folders else ""
        if image_id is None or not isinstance(sentences, list) or folder is None:
            n_bad += 1
            what = f"{entry.get('filepath')!r}/{name!r}" if sub_folders else repr(name)
            if image_id is None:
                problem = "no image file name"
            elif not isinstance(sentences, list):
                problem = "no sentences list"
            else:
                problem = "no filepath folder"
            report.ignore("malformed_entry", loc, f"{what}: {problem}")
            continue
        split = split_map.get(str(entry.get("split")))
        if split is None:
            n_bad += 1
            report.ignore("unknown_split", loc, f"{name}: {entry.get('split')!r}")
            continue
        if image_id in split_of:
            report.ignore("duplicate_image_entry", loc, name)
            continue
        split_of[image_id] = split
        file_of[image_id] = (folder, name.strip())
        for k, sentence in enumerate(sentences):
            text = sentence_text(sentence)
            if text:
                captions.append(RawCaption(image_id, k, text, f"{loc}.sentences[{k}]"))
            else:
                report.ignore("empty_caption", f"{loc}.sentences[{k}]", name)
    check_bad_fraction(path, n_bad, len(entries), max_bad_fraction, what="image entries")
    return captions, split_of, file_of


def locate_images(image_dir: Path, file_of: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """Image id -> path relative to `image_dir` of the entries' files that are on disk.

    One directory listing per (sub-)folder; a missing sub-folder holds no image.
    """
    listings: dict[str, dict[str, str]] = {}
    out: dict[str, str] = {}
    for image_id, (folder, _) in file_of.items():
        if folder not in listings:
            d = image_dir / folder if folder else image_dir
            listings[folder] = files_on_disk(d) if d.is_dir() else {}
        found = listings[folder].get(image_id)
        if found is not None:
            out[image_id] = f"{folder}/{found}" if folder else found
    return out


def find_image_dir(root: Path, variant: Variant, folders: set[str]) -> Path:
    """The variant's image folder under `root`: the first candidate that exists (with
    sub-folders: the first that holds one of the entries' `filepath` folders)."""
    if not variant.sub_folders:
        return find_dir(root, variant.image_dirs)
    for name in variant.image_dirs:
        base = root / name
        if any((base / f).is_dir() for f in folders):
            return base
    looked = ", ".join(f"{root / name}/{f}" for name in variant.image_dirs for f in sorted(folders))
    raise FileNotFoundError(f"{root}: no image folder; looked for {looked}")


def variant_of(root: Path) -> Variant:
    """The variant whose split file is in `root`; with several, the one whose image folder is
    there too (error if that is not exactly one)."""
    present = [v for v in VARIANTS.values() if (root / v.json_file).is_file()]
    if not present:
        raise FileNotFoundError(f"{root}: no Karpathy split file; looked for {', '.join(JSON_FILES)}")
    if len(present) == 1:
        return present[0]
    with_images = [v for v in present if any(
        (root / d / sub).is_dir()
        for d in v.image_dirs for sub in (("train2014", "val2014") if v.sub_folders else (".",))
    )]
    if len(with_images) == 1:
        return with_images[0]
    names = ", ".join(v.json_file for v in (with_images or present))
    raise ValueError(f"{root}: several Karpathy split files ({names}) and no single image folder "
                     "tells which one to read; keep one of them in this folder")


def load_karpathy(
    root: Path,
    *,
    variant: str | None = None,
    image_dirs: Sequence[str] | None = None,
    split_map: Mapping[str, str] = SPLIT_MAP,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> Dataset:
    """Load a directory holding one of Karpathy's JSON files and its images into a `Dataset`.

    `variant` ("flickr8k", "flickr30k", "coco") defaults to the one whose file is in `root`;
    `image_dirs` overrides its image folder candidates.
    """
    root = Path(root)
    if variant is None:
        v = variant_of(root)
    elif variant in VARIANTS:
        v = VARIANTS[variant]
    else:
        raise ValueError(f"unknown Karpathy variant {variant!r}; expected one of {tuple(VARIANTS)}")
    if image_dirs is not None:
        v = Variant(v.name, v.json_file, tuple(image_dirs), v.sub_folders)
    path = root / v.json_file
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no Karpathy split file {v.json_file}")
    data = read_json(path)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON object with an 'images' list")
    report = ProblemReport()
    captions, split_of, file_of = parse_entries(
        path, entries, split_map, report, max_bad_fraction, sub_folders=v.sub_folders
    )
    image_dir = find_image_dir(root, v, {folder for folder, _ in file_of.values()})
    on_disk = locate_images(image_dir, file_of)
    wanted = {
        image_id: str(image_dir / folder / name if folder else image_dir / name)
        for image_id, (folder, name) in file_of.items()
        if image_id not in on_disk
    }
    info = {
        "root": str(root.resolve()),
        "variant": v.name,
        "captions_file": v.json_file,
        "image_dir": image_dir.relative_to(root).as_posix(),  # "." for COCO's folders in the root
    }
    return assemble(captions, split_of, image_dir, "karpathy", report, info, on_disk=on_disk, wanted=wanted)
