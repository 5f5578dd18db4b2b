"""The last screen of `make repro`: this run's scores and where things are, within 100 columns."""

from __future__ import annotations

import json
from pathlib import Path

from captioner.app.summary import WIDTH, main, summary_lines

METRICS = {"bleu1": 0.8927, "bleu2": 0.8345, "bleu3": 0.7837, "bleu4": 0.7394,
           "coco": {"meteor": 0.5021, "rouge_l": 0.8686, "cider": 4.2815},
           "human": {"coco": {"cider": 4.6832}}, "blind_baseline": {"coco": {"cider": 0.4083}},
           "diversity": {"distinct": 0.96}}
RUN = {"split": "dev", "images": 150, "decoding": {"beam_width": 3}}


def test_the_summary_fits_100_columns_and_says_this_runs_scores(tmp_path: Path) -> None:
    (tmp_path / "data/eval").mkdir(parents=True)
    (tmp_path / "data/eval/gallery.html").write_text("<html>")
    lines = summary_lines(METRICS, RUN, tmp_path)
    assert max(map(len, lines)) <= WIDTH
    text = "\n".join(lines)
    assert "dev split, 150 images, beam 3" in text and "0.893 / 0.835 / 0.784 / 0.739" in text
    assert "CIDEr-D 4.282" in text and "human ceiling CIDEr-D 4.683" in text and "blind baseline CIDEr-D 0.408" in text
    assert "data/eval/gallery.html" in text and "data/release" not in text  # only what exists is pointed at
    assert "captioner caption photo.jpg" in text and "make plots" in text


def test_without_an_evaluation_it_says_what_to_run(tmp_path: Path, capsys) -> None:
    assert main(["--metrics", str(tmp_path / "none.json"), "--run-info", str(tmp_path / "none.json")]) == 1
    assert "run `make repro`" in capsys.readouterr().err
    (tmp_path / "m.json").write_text(json.dumps(METRICS))
    (tmp_path / "r.json").write_text(json.dumps(RUN))
    assert main(["--metrics", str(tmp_path / "m.json"), "--run-info", str(tmp_path / "r.json")]) == 0
    assert "BLEU-1..4 0.893" in capsys.readouterr().out
