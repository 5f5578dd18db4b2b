"""Shared pieces of the data-set readers: the `Dataset` table, a problem report, line reading,
deterministic splitting and the final assembly of captions + splits + files on disk."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from captioner.config.params import SPLITS

__all__ = [
    "CAPTIONS_PER_IMAGE", "DEFAULT_MAX_BAD_FRACTION", "DEFAULT_MAX_EXAMPLES", "IMAGE_EXTENSIONS",
    "UTF8_BOM", "Dataset", "ProblemReport", "RawCaption", "assemble", "assign_splits",
    "check_bad_fraction", "files_on_disk", "find_dir", "image_id_of", "read_lines", "split_counts",
    "validate_fractions", "where",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
DEFAULT_MAX_EXAMPLES = 20
DEFAULT_MAX_BAD_FRACTION = 0.01
CAPTIONS_PER_IMAGE = 5  # Flickr8k's; more is kept (valid captions) but noted in the report
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class Dataset:
    """One tidy view of a captioning data set, whatever its on-disk layout.

    captions: image_id, split, caption_no, caption (raw text), one row per kept caption.
    images: image_id, split, path (absolute), one row per image in a split, on disk, captioned.
    report: what was read, what was ignored or repaired and why (see `ProblemReport.as_dict`).
    layout: "flickr8k", "kaggle" or "karpathy" (Karpathy's Flickr8k, Flickr30k or COCO file).
    """

    captions: pd.DataFrame
    images: pd.DataFrame
    report: dict[str, Any]
    layout: str


@dataclass
class ProblemReport:
    """Counts of ignored / repaired / merely noted items by reason, plus the first few examples."""

    max_examples: int = DEFAULT_MAX_EXAMPLES
    ignored: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    noted: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def _note(self, counter: Counter[str], reason: str, where: str, detail: str) -> None:
        counter[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(f"{where}: {detail}" if detail else where)

    def ignore(self, reason: str, where: str, detail: str = "") -> None:
        """Count one dropped item (a line, a caption, an image) under `reason`."""
        self._note(self.ignored, reason, where, detail)

    def repair(self, reason: str, where: str, detail: str = "") -> None:
        """Count one item that was kept after fixing it (bad bytes, CRLF, missing #n...)."""
        self._note(self.repaired, reason, where, detail)

    def note(self, reason: str, where: str, detail: str = "") -> None:
        """Count one item that was kept as it is but is unusual (e.g. more than 5 captions)."""
        self._note(self.noted, reason, where, detail)

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form: {"ignored": {...}, "repaired": {...}, "noted": {...}, "examples": {...}}."""
        return {
            "ignored": dict(sorted(self.ignored.items())),
            "repaired": dict(sorted(self.repaired.items())),
            "noted": dict(sorted(self.noted.items())),
            "examples": {k: list(v) for k, v in sorted(self.examples.items())},
        }


def where(path: Path, lineno: int) -> str:
    """`file:line` label for messages."""
    return f"{path}:{lineno}"


def read_lines(path: Path, report: ProblemReport) -> list[tuple[int, str]]:
    """(1-based line number, text) of every line; CRLF/CR ends stripped, bad UTF-8 replaced.

    Lines with undecodable bytes are kept (with U+FFFD) and counted as repaired, as is a
    UTF-8 byte-order mark (removed). A missing final newline is fine; an empty file gives [].
    """
    out: list[tuple[int, str]] = []
    raw = path.read_bytes()
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
        report.repair("utf8_bom", where(path, 1), "byte-order mark removed")
    if not raw:
        return out
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    n_crlf = 0
    for i, b in enumerate(lines, start=1):
        if b.endswith(b"\r"):
            b = b[:-1]
            n_crlf += 1
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:
            text = b.decode("utf-8", errors="replace")
            report.repair("non_utf8_line", where(path, i), repr(text[:80]))
        out.append((i, text))
    if n_crlf:
        report.repaired["crlf_line_end"] += n_crlf
        report.examples.setdefault("crlf_line_end", []).append(f"{path}: {n_crlf} lines")
    return out


def image_id_of(name: str) -> str | None:
    """Image id of a file name (name without its image extension), or None if not an image name.

    >>> image_id_of("1000268201_693b08cb0e.jpg"), image_id_of("x.jpg.1")
    ('1000268201_693b08cb0e', None)
    """
    name = name.strip()
    stem, ext = os.path.splitext(name)
    if ext.lower() not in IMAGE_EXTENSIONS or not stem or "/" in name or "\\" in name:
        return None
    return stem


def check_bad_fraction(
    path: Path, n_bad: int, n_total: int, max_bad_fraction: float, what: str = "lines"
) -> None:
    """Raise ValueError naming `path` if over `max_bad_fraction` of its `what` are malformed."""
    if n_total and n_bad / n_total > max_bad_fraction:
        raise ValueError(
            f"{path}: {n_bad} of {n_total} {what} are malformed ({n_bad / n_total:.1%} > "
            f"max_bad_fraction={max_bad_fraction:.1%}); is this the right file / layout?"
        )


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Check split fractions: known split names, non-negative, summing to 1 (within 1e-6)."""
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split name(s) {sorted(unknown)}; expected some of {SPLITS}")
    if any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be >= 0, got {dict(fractions)}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)} (sum {total})")
    return {s: float(fractions[s]) for s in SPLITS if s in fractions}


def split_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Integer split sizes summing to `n` (largest-remainder rounding of n * fraction).

    >>> split_counts(10, {"train": 0.7, "dev": 0.15, "test": 0.15})
    {'train': 7, 'dev': 2, 'test': 1}
    """
    fr = validate_fractions(fractions)
    exact = {s: n * f for s, f in fr.items()}
    counts = {s: int(np.floor(v)) for s, v in exact.items()}
    order = sorted(fr, key=lambda s: (-(exact[s] - counts[s]), SPLITS.index(s)))
    for s in order[: n - sum(counts.values())]:
        counts[s] += 1
    return counts


def assign_splits(ids: Iterable[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Deterministic random split: image id -> split name, independent of the input order."""
    unique = sorted(set(ids))
    order = np.random.default_rng(seed).permutation(len(unique))
    out: dict[str, str] = {}
    start = 0
    for split, k in split_counts(len(unique), fractions).items():
        for j in order[start : start + k]:
            out[unique[j]] = split
        start += k
    return out


def find_dir(root: Path, candidates: Sequence[str]) -> Path:
    """First existing directory `root/<candidate>`; error listing all candidates otherwise."""
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{root}: no image folder; looked for {', '.join(candidates)}")


def files_on_disk(image_dir: Path) -> dict[str, str]:
    """Image id -> file name for the image files directly in `image_dir` (one listing)."""
    out: dict[str, str] = {}
    with os.scandir(image_dir) as it:
        for entry in it:
            image_id = image_id_of(entry.name)
            if image_id is not None and entry.is_file():
                out.setdefault(image_id, entry.name)
    return out


@dataclass(frozen=True)
class RawCaption:
    """One parsed caption before filtering: where it came from and what it says."""

    image_id: str
    caption_no: int
    caption: str
    where: str


def assemble(
    captions: Sequence[RawCaption],
    split_of: Mapping[str, str],
    image_dir: Path,
    layout: str,
    report: ProblemReport,
    info: Mapping[str, Any],
    captions_per_image: int = CAPTIONS_PER_IMAGE,
    *,
    on_disk: Mapping[str, str] | None = None,
    wanted: Mapping[str, str] | None = None,
) -> Dataset:
    """Keep captions of images that are in a split and on disk; build the two tables + report.

    Captions of images in no split, split images missing on disk and split images without
    any caption are counted (and exemplified) in the report; nothing left is an error.
    Images with more than `captions_per_image` captions keep them all and are noted.
    `on_disk` (image id -> path relative to `image_dir`) defaults to the image files directly
    in `image_dir`; `wanted` (image id -> where it was looked for) details missing images.
    """
    on_disk = files_on_disk(image_dir) if on_disk is None else on_disk
    wanted = wanted or {}
    image_dir = image_dir.resolve()
    captioned = {c.image_id for c in captions}

    no_split: set[str] = set()
    missing: set[str] = set()
    kept: list[RawCaption] = []
    for c in captions:
        if c.image_id not in split_of:
            no_split.add(c.image_id)
            report.ignore("caption_of_image_in_no_split", c.where, c.image_id)
        elif c.image_id not in on_disk:
            missing.add(c.image_id)
            report.ignore("caption_of_image_missing_on_disk", c.where, c.image_id)
        else:
            kept.append(c)
    for image_id in sorted(no_split):
        report.ignore("image_in_no_split", image_id)
    for image_id, split in sorted(split_of.items()):
        if image_id not in on_disk:
            report.ignore("split_image_missing_on_disk", f"{split}: {image_id}", wanted.get(image_id, ""))
        elif image_id not in captioned:
            report.ignore("split_image_without_captions", f"{split}: {image_id}")

    if not kept:
        raise ValueError(
            f"{info.get('root', image_dir)}: no image is at once captioned, in a split and on disk "
            f"(ignored: {dict(report.ignored)})"
        )
    per_image = Counter(c.image_id for c in kept)
    for image_id, n in sorted(per_image.items()):
        if n > captions_per_image:
            report.note(f"more_than_{captions_per_image}_captions", image_id, f"{n} captions, all kept")
    rank = {s: i for i, s in enumerate(SPLITS)}
    cap = pd.DataFrame(
        {
            "image_id": [c.image_id for c in kept],
            "split": [split_of[c.image_id] for c in kept],
            "caption_no": np.array([c.caption_no for c in kept], dtype=np.int64),
            "caption": [c.caption for c in kept],
        }
    )
    cap = (
        cap.assign(_r=cap["split"].map(rank))
        .sort_values(["_r", "image_id", "caption_no"], kind="stable")
        .drop(columns="_r")
        .reset_index(drop=True)
    )
    img = cap.drop_duplicates("image_id")[["image_id", "split"]].reset_index(drop=True)
    img["path"] = [str(image_dir / on_disk[i]) for i in img["image_id"]]

    rep: dict[str, Any] = {"layout": layout, **info}
    rep["kept"] = {
        "images": int(len(img)),
        "captions": int(len(cap)),
        "images_per_split": {s: int(n) for s, n in img["split"].value_counts().items()},
        "captions_per_split": {s: int(n) for s, n in cap["split"].value_counts().items()},
    }
    rep.update(report.as_dict())
    return Dataset(captions=cap, images=img, report=rep, layout=layout)
