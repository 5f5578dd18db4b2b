"""A release: the trained model folder plus what a user of the model needs beside the weights.

`data/release/` = the model files (copied: DVC stores identical files once in its cache),
`meta.json` with the data set added, `decoding.json` (the evaluation's decoding settings, the
contract read by the CLI, service and export) and `README.md`, the model card. Written by the
`package` stage, after `evaluate`, so a decoding-only change repackages without retraining.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from captioner.io import atomic_path, read_json, write_json

DECODING_KEYS = ("beam_width", "length_penalty", "block_repeat_ngram", "max_length")


def decoding_settings(evaluate: Mapping[str, Any]) -> dict[str, int | float]:
    """The decoding.json contract: beam_width, length_penalty, block_repeat_ngram, max_length."""
    return {"beam_width": int(evaluate["beam_width"]), "length_penalty": float(evaluate["length_penalty"]),
            "block_repeat_ngram": int(evaluate["block_repeat_ngram"]), "max_length": int(evaluate["max_length"])}


KARPATHY_FILES = {"dataset_coco.json": "coco", "dataset_flickr30k.json": "flickr30k"}


def dataset_name(data_root: str | Path) -> str:
    """"scenes" for the embedded generated set (`data/raw/scenes`); "coco" or "flickr30k" for a
    folder holding that Karpathy split file (and no other); else "flickr8k"."""
    root = Path(data_root)
    if root.as_posix().rstrip("/").endswith("data/raw/scenes"):
        return "scenes"
    found = [name for file, name in KARPATHY_FILES.items() if (root / file).is_file()]
    return found[0] if len(found) == 1 and not (root / "dataset_flickr8k.json").is_file() else "flickr8k"


def write_release(model_dir: str | Path, out: str | Path, decoding: Mapping[str, Any],
                  card: str, dataset: str) -> list[str]:
    """Write the release folder atomically; return the names of the files in it."""
    model_dir = Path(model_dir)
    meta = read_json(model_dir / "meta.json")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name in [*meta["members"], "vocab.json"]:
            shutil.copy2(model_dir / name, tmp / name)
        write_json(tmp / "meta.json", {**meta, "dataset": dataset})
        write_json(tmp / "decoding.json", dict(decoding))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        names = sorted(p.name for p in tmp.iterdir())
    return names
