"""Attention sheets: one panel per word, lit where the weights are high."""

import numpy as np
import pytest

from captioner.evaluation.attention_map import FLOOR, PANEL, grid_side, render_attention, weight_mask


def test_grid_side() -> None:
    assert grid_side(49) == 7 and grid_side(196) == 14
    with pytest.raises(ValueError, match="square"):
        grid_side(50)


def test_mask_is_bright_where_the_weight_is() -> None:
    w = np.zeros(49, np.float32)
    w[0] = 1.0  # top-left region
    mask = np.asarray(weight_mask(w, 70))
    assert mask[:5, :5].mean() > 240 and mask[-10:, -10:].mean() == pytest.approx(255 * FLOOR, abs=2)


def test_sheet_layout_and_lighting() -> None:
    image = np.full((224, 224, 3), 200, np.uint8)
    weights = np.zeros((7, 49), np.float32)
    weights[np.arange(7), [0, 6, 42, 48, 24, 0, 0]] = 1.0
    sheet = np.asarray(render_attention(image, ["a", "b", "c", "d", "e", "f", "g"], weights))
    assert sheet.shape == (2 * (PANEL + 22), 5 * PANEL, 3)
    first = sheet[:PANEL, :PANEL]
    assert first[:10, :10].mean() > 180 and first[-10:, -10:].mean() < 80  # lit top-left, dim bottom-right
    with pytest.raises(ValueError, match="2 words but 7 rows"):
        render_attention(image, ["a", "b"], weights)
