"""Readers of the common on-disk caption data set layouts (Flickr8k, Karpathy's split files for
Flickr8k, Flickr30k and COCO, Kaggle's captions.txt) into one tidy `Dataset`; the layout is
detected from its marker files. The generated scenes data set is captioner.datasets.scenes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from captioner.datasets.common import DEFAULT_MAX_BAD_FRACTION, SPLITS, Dataset
from captioner.datasets.flickr8k import TOKEN_FILE, load_flickr8k
from captioner.datasets.kaggle import CAPTIONS_FILE, load_kaggle
from captioner.datasets.karpathy import JSON_FILES, VARIANTS, load_karpathy

__all__ = ["LAYOUTS", "SPLITS", "Dataset", "dataset_name", "detect_layout", "load_dataset"]

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


SCENES_ROOT = "data/raw/scenes"  # where the generate_scenes stage writes the embedded data set


def dataset_name(data_root: str | Path) -> str:
    """What a data root holds, for a model card: "scenes" for the embedded generated set;
    "coco" or "flickr30k" for a folder holding that Karpathy split file (and no other);
    else "flickr8k"."""
    root = Path(data_root)
    if root.as_posix().rstrip("/").endswith(SCENES_ROOT):
        return "scenes"
    found = [name for name, v in VARIANTS.items() if name != "flickr8k" and (root / v.json_file).is_file()]
    return found[0] if len(found) == 1 and not (root / VARIANTS["flickr8k"].json_file).is_file() else "flickr8k"
