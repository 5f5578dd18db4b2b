"""The release folder, its model card, the best-epoch summary and curves, the offline plots
template and log-friendly stage output: fast unit tests (no pipeline run)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from captioner.runtime.console import LineLog
from captioner.training.fit import CurveLogger
from captioner.training.curves import best_epoch_summary
from captioner.app.model_card import CardFacts, render_card
from captioner.app.plots_template import build_template
from captioner.datasets.readers import dataset_name
from captioner.config.decoding import DecodingConfig
from captioner.config.params import EvaluateParams
from captioner.model.folder import write_release

REPO = Path(__file__).resolve().parents[3]
METRICS = {"bleu1": 0.9, "bleu2": 0.8, "bleu3": 0.7, "bleu4": 0.6,
           "coco": {"bleu4": 0.61, "meteor": 0.4, "rouge_l": 0.7, "cider": 1.9},
           "blind_baseline": {"bleu1": 0.5, "bleu2": 0.3, "bleu3": 0.2, "bleu4": 0.1, "coco": {"cider": 0.2}}}


def facts(dataset: str = "scenes", split: str = "dev") -> CardFacts:
    return CardFacts(
        name="captioner-model", dataset=dataset, data_root="data/raw/scenes" if dataset == "scenes" else "../f8k",
        split_images={"train": 700, "dev": 150, "test": 150}, eval_split=split, eval_images=150,
        backbone="efficientnet_lite0", meta={"kind": "merge", "members": ["model.keras"]},
        params={"model": {"units": 256}, "train": {"seed": 42}, "evaluate": {"beam_width": 3}},
        decoding={"beam_width": 3, "length_penalty": 0.0, "block_repeat_ngram": 0, "max_length": 40},
        metrics=METRICS, commit="abc123def456",
    )


def test_card_front_matter_is_hugging_face_yaml_with_the_dataset_and_metrics() -> None:
    card = render_card(facts())
    head, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(head)
    assert meta["dataset"] == "scenes" and meta["toy"] is True and meta["pipeline_tag"] == "image-to-text"
    results = meta["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "dev"
    values = {m["type"]: m["value"] for m in results["metrics"]}
    assert values["bleu4"] == 0.6 and values["coco_cider"] == 1.9
    for text in ("Apache-2.0", "Toy model", "abc123def456", "train 700", "`model.units`",
                 "| BLEU-4 (nltk corpus) | 0.6 | 0.1 |", "| cider (pycocoevalcap) | 1.9 | 0.2 |", "optimistic"):
        assert text in body, text


def test_flickr8k_card_states_the_research_only_terms() -> None:
    card = render_card(facts("flickr8k", "test"))
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["dataset"] == "flickr8k" and meta["toy"] is False and meta["license"] == "other"
    assert "research use only" in card and "Toy model" not in card and "optimistic" not in card


def test_release_folder_holds_model_files_decoding_and_card(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name, text in (("model.keras", "w0"), ("model_1.keras", "w1"), ("vocab.json", "{}")):
        (model / name).write_text(text)
    (model / "meta.json").write_text(json.dumps({"members": ["model.keras", "model_1.keras"], "kind": "merge"}))
    decoding = DecodingConfig.of(EvaluateParams(beam_width=3, length_penalty=1.1, block_repeat_ngram=2,
                                                max_length=30, batch_size=8, split="dev"))
    assert decoding.as_dict() == {"beam_width": 3, "length_penalty": 1.1, "block_repeat_ngram": 2, "max_length": 30,
                                  "rerank": "beam", "consensus_weights": "uniform"}
    names = write_release(model, tmp_path / "release", decoding, "---\ncard\n", "scenes")
    assert names == ["README.md", "decoding.json", "meta.json", "model.keras", "model_1.keras", "vocab.json"]
    assert json.loads((tmp_path / "release/decoding.json").read_text()) == decoding.as_dict()
    assert json.loads((tmp_path / "release/meta.json").read_text())["dataset"] == "scenes"
    assert (tmp_path / "release/model_1.keras").read_text() == "w1"
    (model / "ngrams.npz").write_bytes(b"n-grams")  # the scst stage's: shipped when the model has them
    again = write_release(model, tmp_path / "release2", decoding, "---\ncard\n", "scenes")
    assert again == sorted([*names, "ngrams.npz"]) and (tmp_path / "release2/ngrams.npz").read_bytes() == b"n-grams"
    assert dataset_name("data/raw/scenes") == "scenes" and dataset_name("../shared/flickr8k") == "flickr8k"
    for file, name in (("dataset_coco.json", "coco"), ("dataset_flickr30k.json", "flickr30k")):
        (root := tmp_path / name).mkdir()
        (root / file).write_text("{}")
        assert dataset_name(root) == name


def test_summary_takes_the_best_epoch_not_the_last() -> None:
    history = {"loss": [3.0, 2.0, 1.0], "val_loss": [2.5, 2.0, 2.2],
               "masked_accuracy": [0.1, 0.2, 0.3], "val_masked_accuracy": [0.1, 0.25, 0.2]}
    assert best_epoch_summary(history, 2) == {"best_epoch": 2, "best_val_loss": 2.0, "train_loss": 2.0,
                                              "train_accuracy": 0.2, "val_accuracy": 0.25}


def test_curves_start_at_epoch_1_with_train_and_validation_columns(tmp_path: Path) -> None:
    logger = CurveLogger(tmp_path / "curves")
    for epoch, (t, v) in enumerate([(3.0, 2.5), (2.0, 2.1)]):
        logger.on_epoch_end(epoch, {"loss": t, "val_loss": v, "learning_rate": 0.001})
    assert (tmp_path / "curves/loss.tsv").read_text() == "epoch\ttrain\tvalidation\n1\t3\t2.5\n2\t2\t2.1\n"
    assert [p.name for p in (tmp_path / "curves").iterdir()] == ["loss.tsv"]


def test_line_log_turns_each_redraw_into_a_line() -> None:
    out = io.StringIO()
    log = LineLog(out)
    log.write("\rcaptioning:   0%|  | 0/12")
    log.write("\rcaptioning:  67%|# | 8/12\rcaptioning: 100%|##| 12/12\n")
    log.write("done\n")
    assert out.getvalue().splitlines() == ["captioning:   0%|  | 0/12", "captioning:  67%|# | 8/12",
                                           "captioning: 100%|##| 12/12", "done"]
    assert not log.isatty()


def test_offline_template_inlines_the_scripts_and_keeps_dvc_placeholders(tmp_path: Path) -> None:
    dirs = []
    for name, build in (("vega", "vega.min.js"), ("vega-lite", "vega-lite.min.js"), ("vega-embed", "vega-embed.min.js")):
        d = tmp_path / name
        (d / "build").mkdir(parents=True)
        (d / "package.json").write_text(json.dumps({"name": name, "version": "1.2.3"}))
        (d / "build" / build).write_text(f"var {name.replace('-', '_')} = {{a: 1}};")
        dirs.append(d)
    page = build_template(dirs)
    assert "{plot_divs}" in page and "{refresh_tag}" in page and "{scripts}" not in page
    assert "<script>var vega_embed = {a: 1};</script>" in page and "vega-embed@1.2.3" in page
    assert "body { font-family" in page
    with pytest.raises(ValueError, match="expected vega-lite"):
        build_template([dirs[0], dirs[0], dirs[2]])


def test_committed_template_is_configured_and_loads_nothing_from_the_network() -> None:
    config = (REPO / ".dvc/config").read_text()
    assert "html_template = ../vendor/dvc-plots.html" in config
    page = (REPO / "vendor/dvc-plots.html").read_text()
    assert "{plot_divs}" in page and "vega@5" in page and "vega-lite@5" in page and "vega-embed@6" in page
    assert "<script src=" not in page and "cdn.jsdelivr" not in page


def test_a_stage_under_a_python_without_the_project_stops_in_one_line(tmp_path: Path) -> None:
    """The system Python (here: an interpreter that cannot see the venv's packages: no site
    packages, no PYTHONPATH, no user site; the script's folder is on the path, as it always is)."""
    for stage in ("train", "evaluate", "package"):
        proc = subprocess.run([sys.executable, "-E", "-s", "-S", str(REPO / f"stages/{stage}.py"), "--help"],
                              cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "has no 'captioner'" in lines[0] and "source .venv/bin/activate" in lines[0], proc.stderr
