"""Attention maps: where an attention captioner looked for each word, drawn over the photo.

One panel per word: the image the CNN saw (squashed to its input size), dimmed where the
attention weight is low, with the word underneath. Weights come from beam search
(`Caption.attention`, words x regions) over a square grid of regions (7x7 for
EfficientNet-Lite0, 14x14 for VGG16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["COLUMNS", "FLOOR", "LABEL", "PANEL", "grid_side", "render_attention", "weight_mask"]

PANEL = 160  # pixels per panel side
COLUMNS = 5  # panels per row
LABEL = 22  # pixels under each panel for its word
FLOOR = 0.25  # brightness where the model did not look (1.0 where it looked most)


def grid_side(regions: int) -> int:
    """Side of a square grid of `regions` regions (49 -> 7); a non-square count is an error."""
    side = math.isqrt(regions)
    if side * side != regions:
        raise ValueError(f"{regions} regions do not form a square grid")
    return side


def weight_mask(weights: np.ndarray, size: int) -> Image.Image:
    """One word's (regions,) weights -> a smooth `size` x `size` brightness mask ("L", FLOOR..1)."""
    side = grid_side(len(weights))
    w = np.asarray(weights, np.float32).reshape(side, side)
    w = w / max(float(w.max()), 1e-12)
    grid = Image.fromarray(w, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    level = FLOOR + (1.0 - FLOOR) * np.clip(np.asarray(grid), 0.0, 1.0)
    return Image.fromarray((255 * level).astype(np.uint8), mode="L")


def render_attention(image: np.ndarray, words: Sequence[str], weights: np.ndarray) -> Image.Image:
    """A sheet of panels, one per word: `image` (H, W, 3) uint8 lit where the model looked."""
    if len(words) != len(weights):
        raise ValueError(f"{len(words)} words but {len(weights)} rows of attention weights")
    photo = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB").resize((PANEL, PANEL))
    n = max(len(words), 1)
    cols, rows = min(n, COLUMNS), math.ceil(n / COLUMNS)
    sheet = Image.new("RGB", (cols * PANEL, rows * (PANEL + LABEL)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    black = Image.new("RGB", photo.size, "black")
    for i, (word, w) in enumerate(zip(words, weights)):
        x, y = (i % COLUMNS) * PANEL, (i // COLUMNS) * (PANEL + LABEL)
        sheet.paste(Image.composite(photo, black, weight_mask(w, PANEL)), (x, y))
        draw.text((x + 4, y + PANEL + 4), word, fill="black", font=font)
    return sheet
