"""benchmarks/decode_sweep.py on a toy project folder: decoding rows and sub-ensemble statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import decode_sweep
from captioner.decoding.search import beam_search
from captioner.evaluation.bleu import corpus_bleu_scores
from captioner.features.store import write_features
from captioner.model.build import build_merge_model
from captioner.model.folder import model_meta, save_model_folder
from captioner.model.step import StepDecoder
from tests.helpers.toy import COLOURS


def save_folder(out: Path, models: list, vocab, backbone: str, feature_dim: int) -> None:
    """A trained-model folder of merge `models`, written as the train stage writes one."""
    save_model_folder(out, models, vocab, model_meta(
        backbone=backbone, weights=None, feature_dim=feature_dim, vocab_size=len(vocab),
        member_kinds=["merge"] * len(models), grid=False, best_epoch=1, best_val_loss=0.0))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, toy: dict) -> Path:
    """A trained-project layout holding the toy model three times (an ensemble of 3)."""
    root = tmp_path_factory.mktemp("sweep")
    save_folder(root / "data/model", [toy["model"]] * 3, toy["vocab"], "toy", 8)
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
    assert len({r["mean_words"] for r in rows}) == 1 and 1 <= rows[0]["mean_words"] <= 3  # "a <colour> thing"
    assert "size 3 bleu1: mean" in capsys.readouterr().out


def test_subset_sizes_beyond_the_models_are_refused(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        decode_sweep.main(["--project", str(project), "--subsets", "4"])
    assert exit_.value.code == 2  # argparse's usage error
    assert "error: --subsets: sizes must be 1..3 (the models given), got [4]" in capsys.readouterr().err


def test_invalid_decoding_settings_are_refused_before_loading(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A beam width of 0 is an argparse error naming the setting (no model folder is read)."""
    with pytest.raises(SystemExit) as exit_:
        decode_sweep.main(["--project", str(tmp_path / "nothing"), "--beams", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: decoding settings: beam_width:" in err and "greater than or equal to 1" in err


def test_extra_models_read_their_own_feature_files(project: Path, toy: dict, tmp_path: Path) -> None:
    """--extra-features: each extra model reads its own file, matched to the images by id (here
    the same features stored in reverse order: the same captions as reading the main file),
    and a file with other features changes the captions."""
    ids = [f"img{i}" for i in range(12)]
    rev = tmp_path / "reversed.parquet"
    write_features(rev, ids[::-1], toy["feats"][:12][::-1], {"backbone": "toy"})
    args = ["--project", str(project), "--beams", "2", "--penalties", "0", "--blocks", "0",
            "--extra-model", str(project / "data/model")]
    same = decode_sweep.main(args)
    viewed = decode_sweep.main([*args, "--extra-features", str(rev)])
    assert viewed == [{**same[0], "seconds": viewed[0]["seconds"], "ms_per_image": viewed[0]["ms_per_image"]}]

    # An extra member on 3-d features of its own, whose image branch dominates: decoded by hand.
    other_dir = tmp_path / "other"
    other = build_merge_model(len(toy["vocab"]), 3, 16, 32, 0.0)
    save_folder(other_dir, [other], toy["vocab"], "other", 3)
    g = np.random.default_rng(5).normal(size=(12, 3)).astype(np.float32) * 5
    write_features(tmp_path / "other.parquet", ids, g, {"backbone": "other"})
    rows = decode_sweep.main(["--project", str(project), "--beams", "2", "--penalties", "0", "--blocks", "0",
                              "--extra-model", str(other_dir), "--extra-features", str(tmp_path / "other.parquet")])
    decoder = StepDecoder([toy["model"]] * 3 + [other], views=[(0, 8)] * 3 + [(8, 11)])
    caps = beam_search(decoder, np.hstack([toy["feats"][:12], g]), toy["vocab"], 2, 40)
    assert rows[0]["mean_words"] == pytest.approx(np.mean([len(c.words) for c in caps]), abs=0.005)
    refs = [[["a", COLOURS[c], "thing"]] for c in toy["cls"][:12]]
    assert rows[0]["bleu4"] == pytest.approx(corpus_bleu_scores(refs, [c.words for c in caps])["bleu4"], abs=1e-9)


def test_extra_features_must_match_the_extra_models(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:  # two models, one file
        decode_sweep.main(["--project", str(project), "--extra-model", str(project / "data/model"),
                           str(project / "data/model"), "--extra-features", str(project / "data/features/toy.parquet")])
    assert exit_.value.code == 2  # argparse's usage error
    assert "error: --extra-features: one file per --extra-model (2), got 1" in capsys.readouterr().err


def test_consensus_rows_rerank_with_the_folders_ngrams(project: Path, toy: dict, tmp_path: Path) -> None:
    """--reranks beam consensus: a consensus row per weighting, decoded exactly as
    generate_captions with that config and the model folder's ngrams.npz."""
    import shutil

    from captioner.config.decoding import DecodingConfig
    from captioner.decoding.cider import CiderD
    from captioner.decoding.search import generate_captions
    from captioner.model.folder import NGRAMS_FILE

    local = tmp_path / "proj"
    shutil.copytree(project, local)
    ngrams = CiderD([[["a", c, "thing"]] for c in COLOURS] + [[["a", "thing"]]])
    ngrams.save(local / "data/model" / NGRAMS_FILE)
    rows = decode_sweep.main(["--project", str(local), "--beams", "3", "--penalties", "0", "--blocks", "0",
                              "--reranks", "beam", "consensus", "--consensus-weights", "uniform", "probability"])
    assert [r["rerank"] for r in rows] == ["beam", "consensus/uniform", "consensus/probability"]
    decoder = StepDecoder([toy["model"]] * 3)
    refs = [[["a", COLOURS[c], "thing"]] for c in toy["cls"][:12]]
    for r in rows[1:]:
        config = DecodingConfig(beam_width=3, rerank="consensus", consensus_weights=r["rerank"].split("/")[1])
        caps = generate_captions(decoder, toy["feats"][:12], toy["vocab"], config, progress=False, ngrams=ngrams)
        assert r["bleu4"] == pytest.approx(corpus_bleu_scores(refs, [c.words for c in caps])["bleu4"], abs=1e-9)
