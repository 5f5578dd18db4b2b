"""benchmarks/decode_sweep.py on a toy project folder: decoding rows and sub-ensemble statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import decode_sweep
from captioner.model.step import StepDecoder
from captioner.decoding.search import beam_search
from captioner.evaluation.bleu import corpus_bleu_scores
from captioner.features.store import write_features
from captioner.runtime.io import write_json
from captioner.datasets.text import save_vocabulary
from tests.conftest import COLOURS


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, toy: dict) -> Path:
    """A trained-project layout holding the toy model three times (an ensemble of 3)."""
    root = tmp_path_factory.mktemp("sweep")
    model_dir = root / "data/model"
    model_dir.mkdir(parents=True)
    members = ["model.keras", "model_1.keras", "model_2.keras"]
    for name in members:
        toy["model"].save(model_dir / name)
    save_vocabulary(model_dir / "vocab.json", toy["vocab"])
    write_json(model_dir / "meta.json", {"backbone": "toy", "feature_dim": 8, "members": members})
    n = 12
    ids = [f"img{i}" for i in range(n)]
    write_features(root / "data/features/toy.parquet", ids, toy["feats"][:n], {"backbone": "toy"})
    (root / "data/text").mkdir(parents=True)
    pd.DataFrame({
        "image_id": ids,
        "caption_no": 0,
        "caption": [f"startseq a {COLOURS[c]} thing endseq" for c in toy["cls"][:n]],
    }).to_parquet(root / "data/text/dev.parquet")
    return root


def test_sweep_rows_score_each_setting(project: Path, toy: dict) -> None:
    rows = decode_sweep.main(["--project", str(project), "--beams", "1", "3", "--penalties", "0", "--blocks", "0"])
    assert [(r["beam"], r["length_penalty"]) for r in rows] == [(1, 0.0), (3, 0.0)]
    # The same numbers by hand: decode the 12 images with the ensemble (the toy model three
    # times) and score each caption against its own image's reference.
    refs = [[["a", COLOURS[c], "thing"]] for c in toy["cls"][:12]]
    decoder = StepDecoder([toy["model"]] * 3)
    for r in rows:
        caps = beam_search(decoder, toy["feats"][:12], toy["vocab"], r["beam"], 40)
        want = corpus_bleu_scores(refs, [c.words for c in caps])
        assert {k: r[k] for k in want} == pytest.approx(want, abs=1e-9)
        assert r["mean_words"] == pytest.approx(np.mean([len(c.words) for c in caps]), abs=0.005)
        assert r["bleu1"] > 0.5


def test_subsets_decode_every_sub_ensemble(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = decode_sweep.main(["--project", str(project), "--beams", "1", "--penalties", "0", "--blocks", "0",
                              "--subsets", "1", "2", "3"])
    assert [r["members"] for r in rows] == [[0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2]]
    # The same model three times: every sub-ensemble decodes the same captions.
    assert len({round(r["bleu4"], 9) for r in rows}) == 1
    assert "size 3 bleu1: mean" in capsys.readouterr().out


def test_subset_sizes_beyond_the_models_are_refused(project: Path) -> None:
    with pytest.raises(SystemExit):
        decode_sweep.main(["--project", str(project), "--subsets", "4"])


def test_extra_models_read_their_own_feature_files(project: Path, toy: dict, tmp_path: Path) -> None:
    """--extra-features: each extra model reads its own file, matched to the images by id (here
    the same features stored in reverse order: the same captions as reading the main file),
    and a file with other features changes the captions."""
    from captioner.model.build import build_merge_model

    ids = [f"img{i}" for i in range(12)]
    rev = tmp_path / "reversed.parquet"
    write_features(rev, ids[::-1], toy["feats"][:12][::-1], {"backbone": "toy"})
    args = ["--project", str(project), "--beams", "2", "--penalties", "0", "--blocks", "0",
            "--extra-model", str(project / "data/model")]
    same = decode_sweep.main(args)
    viewed = decode_sweep.main([*args, "--extra-features", str(rev)])
    assert viewed == [{**same[0], "seconds": viewed[0]["seconds"]}]

    # An extra member on 3-d features of its own, whose image branch dominates: decoded by hand.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = build_merge_model(len(toy["vocab"]), 3, 16, 32, 0.0)
    other.save(other_dir / "model.keras")
    save_vocabulary(other_dir / "vocab.json", toy["vocab"])
    write_json(other_dir / "meta.json", {"backbone": "other", "feature_dim": 3, "members": ["model.keras"]})
    g = np.random.default_rng(5).normal(size=(12, 3)).astype(np.float32) * 5
    write_features(tmp_path / "other.parquet", ids, g, {"backbone": "other"})
    rows = decode_sweep.main(["--project", str(project), "--beams", "2", "--penalties", "0", "--blocks", "0",
                              "--extra-model", str(other_dir), "--extra-features", str(tmp_path / "other.parquet")])
    decoder = StepDecoder([toy["model"]] * 3 + [other], views=[(0, 8)] * 3 + [(8, 11)])
    caps = beam_search(decoder, np.hstack([toy["feats"][:12], g]), toy["vocab"], 2, 40)
    assert rows[0]["mean_words"] == pytest.approx(np.mean([len(c.words) for c in caps]), abs=0.005)
    refs = [[["a", COLOURS[c], "thing"]] for c in toy["cls"][:12]]
    assert rows[0]["bleu4"] == pytest.approx(corpus_bleu_scores(refs, [c.words for c in caps])["bleu4"], abs=1e-9)


def test_extra_features_must_match_the_extra_models(project: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # two models, one file
        decode_sweep.main(["--project", str(project), "--extra-model", str(project / "data/model"),
                           str(project / "data/model"), "--extra-features", str(project / "data/features/toy.parquet")])
