"""Reader for Kaggle's Flickr8k layout: `captions.txt` + `Images/`, no split files.

    <root>/captions.txt     CSV, header `image,caption`, one caption a row
    <root>/Images/<id>.jpg

Captions are numbered per image in file order; images are split at random (by image, with
`seed`), deterministically and independently of the file's row order.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from captioner.datasets.common import (
    DEFAULT_MAX_BAD_FRACTION,
    Dataset,
    ProblemReport,
    RawCaption,
    assemble,
    assign_splits,
    check_bad_fraction,
    files_on_disk,
    find_dir,
    image_id_of,
    read_lines,
    where,
)

__all__ = [
    "CAPTIONS_FILE", "DEFAULT_SPLIT_FRACTIONS", "HEADER", "IMAGE_DIRS", "load_kaggle", "parse_csv_line",
    "read_captions_csv",
]

CAPTIONS_FILE = "captions.txt"
IMAGE_DIRS: tuple[str, ...] = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
HEADER: tuple[str, str] = ("image", "caption")
# Flickr8k's own 6000 / 1000 / 1000 proportions.
DEFAULT_SPLIT_FRACTIONS: Mapping[str, float] = {"train": 0.75, "dev": 0.125, "test": 0.125}


def parse_csv_line(text: str) -> tuple[str, str] | None:
    """(image name, caption) of one CSV row; unquoted commas stay in the caption."""
    try:
        fields = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return None
    if len(fields) < 2:
        return None
    return fields[0].strip(), ",".join(fields[1:]).strip()


def read_captions_csv(
    path: Path, report: ProblemReport, max_bad_fraction: float
) -> list[RawCaption]:
    """Parse captions.txt: header first, then `image,caption` rows numbered per image."""
    out: list[RawCaption] = []
    next_no: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    n_bad = n_nonblank = 0
    for k, (lineno, text) in enumerate(read_lines(path, report)):
        loc = where(path, lineno)
        if not text.strip():
            report.ignore("blank_line", loc)
            continue
        row = parse_csv_line(text)
        if k == 0 and row is not None and tuple(f.lower() for f in row) == HEADER:
            continue
        n_nonblank += 1
        if row is None:
            n_bad += 1
            report.ignore("line_without_comma", loc, repr(text[:80]))
            continue
        name, caption = row
        image_id = image_id_of(name)
        if image_id is None:
            n_bad += 1
            report.ignore("not_an_image_name", loc, repr(name[:80]))
        elif not caption:
            n_bad += 1
            report.ignore("empty_caption", loc, name)
        elif (image_id, caption) in seen:
            report.ignore("duplicate_line", loc, name)
        else:
            seen.add((image_id, caption))
            no = next_no.get(image_id, 0)
            next_no[image_id] = no + 1
            out.append(RawCaption(image_id, no, caption, loc))
    check_bad_fraction(path, n_bad, n_nonblank, max_bad_fraction)
    return out


def load_kaggle(
    root: Path,
    *,
    seed: int = 0,
    split_fractions: Mapping[str, float] | None = None,
    captions_file: str = CAPTIONS_FILE,
    image_dirs: Sequence[str] = IMAGE_DIRS,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> Dataset:
    """Load a Kaggle-layout directory; split the captioned images on disk with `seed`."""
    root = Path(root)
    path = root / captions_file
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no captions file {captions_file}")
    image_dir = find_dir(root, image_dirs)
    fractions = dict(split_fractions or DEFAULT_SPLIT_FRACTIONS)
    report = ProblemReport()
    captions = read_captions_csv(path, report, max_bad_fraction)
    on_disk = files_on_disk(image_dir)
    for c in captions:
        if c.image_id not in on_disk:
            report.ignore("caption_of_image_missing_on_disk", c.where, c.image_id)
    captions = [c for c in captions if c.image_id in on_disk]
    split_of = assign_splits((c.image_id for c in captions), fractions, seed)
    info = {
        "root": str(root.resolve()),
        "captions_file": captions_file,
        "image_dir": image_dir.name,
        "seed": seed,
        "split_fractions": fractions,
    }
    return assemble(captions, split_of, image_dir, "kaggle", report, info)
