"""Reader for the standard Flickr8k layout.

    <root>/Flicker8k_Dataset/<id>.jpg      (or Flickr8k_Dataset/, Images/)
    <root>/Flickr8k.token.txt              <id>.jpg#<n>\\t<caption>
    <root>/Flickr_8k.{train,dev,test}Images.txt   one <id>.jpg a line; each file optional

Copes with the real files' quirks (captions of images in no split, ids like `x.jpg.1#0`,
CRLF, blank lines, missing final newline, bad UTF-8, lines without a tab, ids without `#n`,
empty captions, duplicates) and reports every dropped or repaired line with file:line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from captioner.datasets.common import (
    DEFAULT_MAX_BAD_FRACTION,
    SPLITS,
    Dataset,
    ProblemReport,
    RawCaption,
    assemble,
    assign_splits,
    check_bad_fraction,
    find_dir,
    image_id_of,
    read_lines,
    where,
)

__all__ = [
    "IMAGE_DIRS", "SPLIT_FILES", "TOKEN_FILE", "load_flickr8k", "number_unnumbered", "parse_token_line",
    "read_split_files", "read_token_file",
]

TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES: Mapping[str, str] = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGE_DIRS: tuple[str, ...] = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")

_KEY_WS = re.compile(r"^(\S+#\d+)\s+(.*)$")


def parse_token_line(text: str) -> tuple[str, str | None, str] | str:
    """Split one token-file line into (image name, caption number text or None, caption).

    Returns a reason string instead when the line is malformed. A line without a tab is
    accepted only if it starts with `<name>#<n>` followed by whitespace.
    """
    if "\t" in text:
        key, caption = text.split("\t", 1)
    else:
        m = _KEY_WS.match(text.strip())
        if not m:
            return "line_without_tab"
        key, caption = m.groups()
    key = key.strip()
    name, sep, num = key.rpartition("#")
    if not sep:
        name, num_opt = key, None
    else:
        num_opt = num.strip()
    if not name.strip():
        return "missing_image_name"
    return name.strip(), num_opt, caption.strip()


def read_token_file(
    path: Path, report: ProblemReport, max_bad_fraction: float
) -> list[RawCaption]:
    """Parse the captions file: valid captions, numbered; problems go to `report`."""
    lines = read_lines(path, report)
    numbered: list[RawCaption] = []
    unnumbered: list[tuple[str, str, str]] = []  # image_id, caption, where
    seen: dict[tuple[str, int], str] = {}
    n_bad = n_nonblank = 0
    for lineno, text in lines:
        loc = where(path, lineno)
        if not text.strip():
            report.ignore("blank_line", loc)
            continue
        n_nonblank += 1
        parsed = parse_token_line(text)
        if isinstance(parsed, str):
            n_bad += 1
            report.ignore(parsed, loc, repr(text[:80]))
            continue
        name, num, caption = parsed
        image_id = image_id_of(name)
        if image_id is None:
            n_bad += 1
            report.ignore("not_an_image_name", loc, repr(name))
            continue
        if num is not None and not num.isdigit():
            n_bad += 1
            report.ignore("bad_caption_number", loc, repr(f"{name}#{num}"))
            continue
        if not caption:
            n_bad += 1
            report.ignore("empty_caption", loc, name)
            continue
        if num is None:
            report.repair("id_without_caption_no", loc, name)
            unnumbered.append((image_id, caption, loc))
            continue
        k = (image_id, int(num))
        if k in seen:
            reason = "duplicate_line" if seen[k] == caption else "conflicting_caption_no"
            report.ignore(reason, loc, f"{name}#{num}")
            continue
        seen[k] = caption
        numbered.append(RawCaption(image_id, int(num), caption, loc))
    check_bad_fraction(path, n_bad, n_nonblank, max_bad_fraction)
    return numbered + number_unnumbered(unnumbered, seen, report)


def number_unnumbered(
    unnumbered: Sequence[tuple[str, str, str]],
    seen: dict[tuple[str, int], str],
    report: ProblemReport,
) -> list[RawCaption]:
    """Give captions without `#n` the lowest numbers not used by that image, in file order."""
    out: list[RawCaption] = []
    texts: dict[str, set[str]] = {}
    for (image_id, _), caption in seen.items():
        texts.setdefault(image_id, set()).add(caption)
    for image_id, caption, loc in unnumbered:
        if caption in texts.setdefault(image_id, set()):
            report.ignore("duplicate_line", loc, image_id)
            continue
        n = 0
        while (image_id, n) in seen:
            n += 1
        seen[(image_id, n)] = caption
        texts[image_id].add(caption)
        out.append(RawCaption(image_id, n, caption, loc))
    return out


def read_split_files(
    root: Path,
    split_files: Mapping[str, str],
    report: ProblemReport,
    max_bad_fraction: float,
) -> tuple[dict[str, str], list[str]]:
    """Image id -> split from the split files present (a missing file = an absent split).

    An image listed in several splits stays in the first (train, dev, test order).
    Returns the mapping and the names of the files that were read.
    """
    split_of: dict[str, str] = {}
    read: list[str] = []
    for split in SPLITS:
        if split not in split_files or not (root / split_files[split]).is_file():
            continue
        path = root / split_files[split]
        read.append(path.name)
        n_bad = n_nonblank = 0
        for lineno, text in read_lines(path, report):
            loc = where(path, lineno)
            name = text.strip()
            if not name:
                report.ignore("blank_line", loc)
                continue
            n_nonblank += 1
            image_id = image_id_of(name)
            if image_id is None:
                n_bad += 1
                report.ignore("bad_split_entry", loc, repr(name[:80]))
            elif image_id not in split_of:
                split_of[image_id] = split
            elif split_of[image_id] == split:
                report.ignore("duplicate_split_entry", loc, name)
            else:
                first = split_of[image_id]
                report.ignore("image_in_several_splits", loc, f"{name} already in {first}")
        check_bad_fraction(path, n_bad, n_nonblank, max_bad_fraction)
    return split_of, read


def load_flickr8k(
    root: Path,
    *,
    token_file: str = TOKEN_FILE,
    split_files: Mapping[str, str] = SPLIT_FILES,
    image_dirs: Sequence[str] = IMAGE_DIRS,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    seed: int = 0,
    split_fractions: Mapping[str, float] | None = None,
) -> Dataset:
    """Load a Flickr8k-layout directory into a `Dataset`.

    With no split file at all, `split_fractions` (if given) splits the images at random with
    `seed`; otherwise that is an error.
    """
    root = Path(root)
    token_path = root / token_file
    if not token_path.is_file():
        raise FileNotFoundError(f"{root}: no captions file {token_file}")
    image_dir = find_dir(root, image_dirs)
    report = ProblemReport()
    captions = read_token_file(token_path, report, max_bad_fraction)
    split_of, read = read_split_files(root, split_files, report, max_bad_fraction)
    if not read:
        if split_fractions is None:
            raise FileNotFoundError(
                f"{root}: no split file; looked for {', '.join(split_files.values())} "
                "(or pass split_fractions to split at random)"
            )
        split_of = assign_splits((c.image_id for c in captions), split_fractions, seed)
    info = {
        "root": str(root.resolve()),
        "captions_file": token_file,
        "split_files": read,
        "image_dir": image_dir.name,
    }
    return assemble(captions, split_of, image_dir, "flickr8k", report, info)
