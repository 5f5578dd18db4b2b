"""Inputs of the evaluation gallery: a small results table and coloured thumbnails."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

COLOURS = {"red": (220, 20, 20), "green": (20, 180, 20), "blue": (20, 20, 220)}



def make_table(bleus: list[float]) -> pd.DataFrame:
    ids = [f"img{i:02d}" for i in range(len(bleus))]
    return pd.DataFrame({
        "image_id": ids,
        "caption": [f"caption of {i}" for i in ids],
        "logprob": [-1.0] * len(ids),
        "references": [[f"ref one of {i}", f"ref two of {i}"] for i in ids],
        "bleu4": bleus,
    })



def write_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (400, 300)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path




def make_gallery_inputs(tmp_path: Path) -> tuple[pd.DataFrame, dict[str, str], Path]:
    """Three images (red, green, blue), captions and references with markup to escape."""
    table = make_table([0.9, 0.1, 0.5])
    table.loc[0, "caption"] = 'a <script>alert("x")</script> & friends'
    table.at[1, "references"] = ["<b>bold</b> reference", "plain & simple"]
    paths = {}
    for image_id, colour in zip(table["image_id"], COLOURS):
        paths[image_id] = str(write_png(tmp_path / "imgs" / f"{image_id}.png", COLOURS[colour]).relative_to(tmp_path))
    return table, paths, tmp_path
