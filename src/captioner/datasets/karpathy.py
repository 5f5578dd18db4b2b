"""Reader for Karpathy's split file of Flickr8k.

    <root>/dataset_flickr8k.json
        {"images": [{"filename", "split", "sentences": [{"raw", "tokens"}]}]}
    <root>/Flicker8k_Dataset/<id>.jpg  (or Images/, Flickr8k_Dataset/)

Splits map train->train, restval->train, val->dev, test->test. A sentence's caption is its
`raw` text (its joined `tokens` when `raw` is missing); caption_no is its index in the list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from captioner.datasets.common import (
    DEFAULT_MAX_BAD_FRACTION,
    Dataset,
    ProblemReport,
    RawCaption,
    assemble,
    check_bad_fraction,
    find_dir,
    image_id_of,
)
from captioner.io import read_json

JSON_FILE = "dataset_flickr8k.json"
IMAGE_DIRS: tuple[str, ...] = ("Flicker8k_Dataset", "Images", "Flickr8k_Dataset")
SPLIT_MAP: Mapping[str, str] = {"train": "train", "restval": "train", "val": "dev", "test": "test"}


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


def parse_entries(
    path: Path,
    entries: list[Any],
    split_map: Mapping[str, str],
    report: ProblemReport,
    max_bad_fraction: float,
) -> tuple[list[RawCaption], dict[str, str]]:
    """Captions and image id -> split from the JSON's `images` list; problems to `report`."""
    captions: list[RawCaption] = []
    split_of: dict[str, str] = {}
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
        split = split_map.get(str(entry.get("split")))
        if image_id is None or not isinstance(sentences, list):
            n_bad += 1
            report.ignore("malformed_entry", loc, repr(name))
            continue
        if split is None:
            n_bad += 1
            report.ignore("unknown_split", loc, f"{name}: {entry.get('split')!r}")
            continue
        if image_id in split_of:
            report.ignore("duplicate_image_entry", loc, name)
            continue
        split_of[image_id] = split
        for k, sentence in enumerate(sentences):
            text = sentence_text(sentence)
            if text:
                captions.append(RawCaption(image_id, k, text, f"{loc}.sentences[{k}]"))
            else:
                report.ignore("empty_caption", f"{loc}.sentences[{k}]", name)
    check_bad_fraction(path, n_bad, len(entries), max_bad_fraction, what="image entries")
    return captions, split_of


def load_karpathy(
    root: Path,
    *,
    json_file: str = JSON_FILE,
    image_dirs: Sequence[str] = IMAGE_DIRS,
    split_map: Mapping[str, str] = SPLIT_MAP,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> Dataset:
    """Load a directory holding Karpathy's JSON and the image folder into a `Dataset`."""
    root = Path(root)
    path = root / json_file
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no Karpathy split file {json_file}")
    data = read_json(path)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON object with an 'images' list")
    image_dir = find_dir(root, image_dirs)
    report = ProblemReport()
    captions, split_of = parse_entries(path, entries, split_map, report, max_bad_fraction)
    info = {"root": str(root.resolve()), "captions_file": json_file, "image_dir": image_dir.name}
    return assemble(captions, split_of, image_dir, "karpathy", report, info)
