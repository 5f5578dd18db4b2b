import math

import pandas as pd
import pytest

from captioner.evaluation.scores import (
    blind_caption,
    raw_references_by_image,
    references_by_image,
    results_table,
    train_caption_set,
)
from captioner.evaluation.bleu import corpus_bleu_scores, sentence_bleu4


def test_perfect_and_disjoint_captions() -> None:
    refs = [[["a", "red", "circle", "on", "white"], ["a", "red", "disc"]]]
    assert corpus_bleu_scores(refs, [["a", "red", "circle", "on", "white"]]) == {
        "bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0,
    }
    low = corpus_bleu_scores(refs, [["blue", "square", "in", "the", "corner"]])
    assert low["bleu1"] == 0.0


def test_bleu_orders_are_nested_and_exact() -> None:
    refs = [[["a", "dog", "runs", "on", "the", "grass"]], [["two", "men", "sit", "on", "a", "bench"]]]
    hyps = [["a", "dog", "runs", "in", "the", "grass"], ["two", "men", "sit", "near", "a", "bench"]]
    s = corpus_bleu_scores(refs, hyps)
    assert 1.0 > s["bleu1"] > s["bleu2"] > s["bleu3"] >= s["bleu4"] >= 0.0
    # Corpus n-gram precisions (pooled over both captions): 10/12 unigrams, 6/10 bigrams,
    # 2/8 trigrams, 0/6 4-grams; same lengths, so no brevity penalty.
    assert s["bleu1"] == pytest.approx(10 / 12)
    assert s["bleu2"] == pytest.approx((10 / 12 * 6 / 10) ** (1 / 2))
    assert s["bleu3"] == pytest.approx((10 / 12 * 6 / 10 * 2 / 8) ** (1 / 3))
    assert s["bleu4"] == pytest.approx(0.0, abs=1e-12)  # a zero 4-gram precision, unsmoothed


def test_short_captions_pay_the_brevity_penalty() -> None:
    s = corpus_bleu_scores([[["a", "b", "c", "d", "e", "f"]]], [["a", "b", "c"]])
    # every n-gram up to 3 matches, but 3 words for 6: BP = exp(1 - 6 / 3)
    assert s["bleu1"] == s["bleu2"] == s["bleu3"] == pytest.approx(math.exp(-1.0))


def test_mismatched_lengths_fail() -> None:
    with pytest.raises(ValueError, match="2 reference sets for 1"):
        corpus_bleu_scores([[["a"]], [["b"]]], [["a"]])


def test_sentence_bleu_is_smoothed() -> None:
    # precisions 2/3, 1/2, 0/1, 0/1; smoothing method 1 turns each 0 count into 0.1
    got = sentence_bleu4([["a", "red", "circle"]], ["a", "red", "square"])
    assert got == pytest.approx((2 / 3 * 1 / 2 * 0.1 * 0.1) ** (1 / 4))
    assert sentence_bleu4([["a", "red", "circle", "here"]], ["a", "red", "circle", "here"]) == pytest.approx(1.0)


def test_references_blind_caption_and_table() -> None:
    caps = pd.DataFrame({
        "image_id": ["x", "x", "y"],
        "caption_no": [1, 0, 0],
        "caption": ["startseq a b endseq", "startseq c endseq", "startseq a b endseq"],
    })
    refs = references_by_image(caps)
    assert refs == {"x": [["c"], ["a", "b"]], "y": [["a", "b"]]}
    assert blind_caption(caps) == ["a", "b"]
    table = results_table(["x", "y"], [["c"], ["a", "b"]], [-1.0, -2.0], refs)
    assert list(table["caption"]) == ["c", "a b"] and table["references"][0] == ["c", "a b"]


def test_raw_references_and_per_image_columns() -> None:
    caps = pd.DataFrame({
        "image_id": ["x", "x", "y"],
        "caption_no": [1, 0, 0],
        "caption": ["startseq a b endseq", "startseq c endseq", "startseq a b endseq"],
        "raw_caption": ["A, b.", "C!", "a B"],
    })
    assert raw_references_by_image(caps) == {"x": ["C!", "A, b."], "y": ["a B"]}
    with pytest.raises(ValueError, match="no raw_caption column.*dvc repro clean_text"):
        raw_references_by_image(caps.drop(columns="raw_caption"))
    assert train_caption_set(caps) == {"a b", "c"}
    refs = references_by_image(caps)
    table = results_table(["x", "y"], [["c"], ["a"]], [-1.0, -2.0], refs, {"cider": [1.5, 0.25]})
    assert list(table["cider"]) == [1.5, 0.25]
    with pytest.raises(ValueError, match="per-image cider: 1 values for 2 images"):
        results_table(["x", "y"], [["c"], ["a"]], [-1.0, -2.0], refs, {"cider": [1.5]})
