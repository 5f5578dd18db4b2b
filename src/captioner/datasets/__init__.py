"""Data sets: readers of the common Flickr8k on-disk layouts into one tidy `Dataset`, and the
generated scenes data set (`captioner.datasets.scenes`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from captioner.datasets.common import DEFAULT_MAX_BAD_FRACTION, SPLITS, Dataset
from captioner.datasets.flickr8k import TOKEN_FILE, load_flickr8k
from captioner.datasets.kaggle import CAPTIONS_FILE, load_kaggle
from captioner.datasets.karpathy import JSON_FILES, load_karpathy

__all__ = ["LAYOUTS", "SPLITS", "Dataset", "detect_layout", "load_dataset"]

# Layout name -> the files that identify it (any one of them), in detection order.
LAYOUT_MARKERS: Mapping[str, tuple[str, ...]] = {
    "flickr8k": (TOKEN_FILE,),
    "karpathy": JSON_FILES,  # Karpathy's Flickr8k, Flickr30k or COCO split file
    "kaggle": (CAPTIONS_FILE,),
}
LAYOUTS: tuple[str, ...] = (*LAYOUT_MARKERS, "auto")


def detect_layout(root: Path, markers: Mapping[str, tuple[str, ...]] = LAYOUT_MARKERS) -> str:
    """First layout with a marker file in `root`; error listing what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data set directory does not exist")
    for layout, files in markers.items():
        if any((root / f).is_file() for f in files):
            return layout
    looked = ", ".join(f"{' or '.join(files)} ({layout})" for layout, files in markers.items())
    raise FileNotFoundError(f"{root}: cannot tell the data set layout; looked for {looked}")


def load_dataset(
    root: Path,
    layout: str = "auto",
    *,
    seed: int = 0,
    split_fractions: Mapping[str, float] | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> Dataset:
    """Read the data set at `root` in `layout` ("flickr8k", "kaggle", "karpathy" or "auto").

    `seed` and `split_fractions` split layouts that have no split (kaggle; flickr8k without
    any split file); `max_bad_fraction` of malformed lines per file is tolerated.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    loaders: dict[str, Callable[[], Dataset]] = {
        "flickr8k": lambda: load_flickr8k(
            root, seed=seed, split_fractions=split_fractions, max_bad_fraction=max_bad_fraction
        ),
        "kaggle": lambda: load_kaggle(
            root, seed=seed, split_fractions=split_fractions, max_bad_fraction=max_bad_fraction
        ),
        "karpathy": lambda: load_karpathy(root, max_bad_fraction=max_bad_fraction),
    }
    return loaders[layout]()
