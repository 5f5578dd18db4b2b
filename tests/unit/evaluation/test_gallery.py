"""The evaluation gallery: selection order, embedded images, escaping (its headless-Chromium
render: tests/system/test_gallery.py)."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from captioner.evaluation.gallery import bleu_rows, coco_rows, image_paths, render_gallery, select_examples, write_gallery
from tests.helpers.gallery import COLOURS, make_gallery_inputs, make_table

def test_select_examples_best_then_worst_then_sample_deterministic() -> None:
    table = make_table([0.5, 0.9, 0.1, 0.7, 0.0, 0.3, 0.8, 0.2, 0.6, 0.4])
    chosen = select_examples(table, 7)
    assert list(chosen["group"]) == ["best"] * 3 + ["worst"] * 2 + ["sample"] * 2
    assert list(chosen["bleu4"][:5]) == [0.9, 0.8, 0.7, 0.0, 0.1]  # best descending, worst ascending
    sample = chosen[chosen["group"] == "sample"]
    assert set(sample["bleu4"]) <= {0.2, 0.3, 0.4, 0.5, 0.6} and list(sample["bleu4"]) == sorted(sample["bleu4"], reverse=True)
    shuffled = table.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(select_examples(shuffled, 7), chosen)  # row order does not matter
    assert len(select_examples(table, 100)) == 10 and select_examples(table, 0).empty
    assert list(select_examples(table, 2)["group"]) == ["best", "worst"]


def test_select_examples_ranks_by_cider_when_there_is_one() -> None:
    table = make_table([0.9, 0.8, 0.1, 0.0]).assign(cider=[0.2, 1.5, 0.9, 0.3])
    chosen = select_examples(table, 2)
    assert list(chosen["image_id"]) == ["img01", "img00"]  # best and worst by CIDEr-D (by BLEU-4: img00, img03)
    page = render_gallery(chosen.assign(src=None, problem=None), "t")
    assert "Best by CIDEr-D" in page and "Worst by CIDEr-D" in page and "by BLEU-4" not in page
    assert re.findall(r'data-image-id="([^"]+)"', page) == ["img01", "img00"]
    assert 'data-bleu4="0.8000" data-cider="1.5000"' in page
    assert ">CIDEr-D</small> 1.500<" in page and ">BLEU-4</small> 0.800<" in page  # both shown


def test_select_examples_breaks_ties_by_image_id() -> None:
    chosen = select_examples(make_table([0.0] * 6), 4)
    assert list(chosen["image_id"][:3]) == ["img00", "img01", "img05"]  # best 2 by id, then worst from the end


@pytest.fixture
def gallery_inputs(tmp_path: Path) -> tuple[pd.DataFrame, dict[str, str], Path]:
    return make_gallery_inputs(tmp_path)


def test_gallery_embeds_escapes_and_orders(gallery_inputs) -> None:
    table, paths, root = gallery_inputs
    out = root / "eval" / "gallery.html"
    problems = write_gallery(out, table, paths, 3, "test <gallery>", {"BLEU4": "0.500"}, root=root, max_side=96)
    page = out.read_text(encoding="utf-8")
    assert problems == []
    assert re.findall(r'data-image-id="([^"]+)"', page) == ["img00", "img01", "img02"]  # best, worst, sample
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 3 and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    thumb = Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1])))
    assert thumb.format == "JPEG" and max(thumb.size) == 96 and thumb.size == (96, 72)  # aspect kept
    assert np.asarray(thumb.convert("RGB"))[36, 48].tolist() == pytest.approx(list(COLOURS["red"]), abs=12)
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; friends" in page
    assert "&lt;b&gt;bold&lt;/b&gt; reference" in page and "<title>test &lt;gallery&gt;</title>" in page
    assert "http://" not in page and "https://" not in page and "default-src 'none'; img-src data:" in page
    assert 'data-bleu4="0.9000"' in page and "0.900" in page


def test_gallery_missing_image_is_a_placeholder_and_reported(gallery_inputs) -> None:
    table, paths, root = gallery_inputs
    (root / paths["img01"]).unlink()
    del paths["img02"]
    problems = write_gallery(root / "g.html", table, paths, 3, "t", root=root)
    page = (root / "g.html").read_text()
    assert len(problems) == 2 and "img01.png: file not found" in problems[0] and "img02: no image path" in problems[1]
    assert page.count('<div class="missing">') == 2 and page.count("<img ") == 1


def test_empty_caption_is_visible_and_helpers() -> None:
    examples = select_examples(make_table([0.0]), 1).assign(caption="", src=None, problem="gone")
    page = render_gallery(examples, "t")
    assert "(empty caption)" in page and "image unavailable: gone" in page
    assert bleu_rows({"bleu1": 0.91234, "bleu2": 0.8, "bleu3": 0.7, "bleu4": 0.6}) == [
        {"bleu": "BLEU-1", "score": 0.9123}, {"bleu": "BLEU-2", "score": 0.8},
        {"bleu": "BLEU-3", "score": 0.7}, {"bleu": "BLEU-4", "score": 0.6},
    ]
    assert coco_rows({"cider": 0.53123, "meteor": 0.2, "bleu4": 0.1}) == [
        {"metric": "CIDEr-D", "score": 0.5312}, {"metric": "METEOR", "score": 0.2}]
    assert "Best by BLEU-4" in render_gallery(select_examples(make_table([0.5]), 1).assign(src=None, problem=None), "t")
    assert image_paths(pd.DataFrame({"image_id": ["a"], "split": ["test"], "path": ["x/a.jpg"]})) == {"a": "x/a.jpg"}
    with pytest.raises(ValueError, match="lacks column"):
        select_examples(pd.DataFrame({"image_id": ["a"]}), 1)


