"""Consensus (minimum-Bayes-risk) reranking: the expected CIDEr-D of each beam candidate against
the others, its weights, its place in beam search and the decoding config, and the n-gram
document frequencies it reads from a model folder."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.config.decoding import DecodingConfig, DecodingError
from captioner.datasets.text import END, START
from captioner.decoding.cider import CiderD
from captioner.decoding.consensus import Consensus, expected_utility
from captioner.decoding.search import beam_search, generate_captions
from tests.unit.decoding.test_decoding import CHAIN_VOCAB, Chain

CORPUS = [[s.split() for s in caps] for caps in (
    ("a dog runs on the grass", "a brown dog runs", "the dog is running on grass"),
    ("a man rides a bike", "a person on a bicycle", "a man riding a bike on the road"),
    ("two children play in the water", "kids splash in a pool", "children playing in water"),
)]


def _by_loops(scorer: CiderD, cands: list[list[str]], weights: list[float]) -> list[float]:
    """Expected utility the slow way: one CIDEr-D call per (candidate, reference) pair."""
    out = []
    for i, c in enumerate(cands):
        num = den = 0.0
        for j, r in enumerate(cands):
            if j != i:
                num += weights[j] * float(scorer.score([c], [0], scorer.references([[r]]))[0])
                den += weights[j]
        out.append(num / den)
    return out


def test_expected_utility_leaves_out_the_diagonal_and_weighs_the_others() -> None:
    u = np.array([[[9.0, 1.0, 3.0], [2.0, 9.0, 4.0], [5.0, 6.0, 9.0]]])
    got = expected_utility(u, np.array([[1.0, 1.0, 2.0]]))
    np.testing.assert_allclose(got, [[(1 + 2 * 3) / 3, (2 + 2 * 4) / 3, (5 + 6) / 2]])
    assert np.isneginf(expected_utility(u, np.array([[1.0, 0.0, 0.0]]))[0, 0])  # no weighted other


def test_consensus_keeps_the_candidate_the_others_agree_with() -> None:
    """The most likely candidate is an outlier; consensus keeps the one closest to the rest,
    exactly the arg-max of the expected utility computed pair by pair."""
    scorer = CiderD(CORPUS)
    cands = [["a", "man", "rides", "a", "bike"], ["a", "dog", "runs", "on", "the", "grass"],
             ["a", "dog", "runs", "on", "grass"], ["the", "dog", "runs", "on", "the", "grass"]]
    scores = np.array([[-1.0, -2.0, -2.5, -3.0]])
    slow = _by_loops(scorer, cands, [1.0] * 4)
    assert Consensus(scorer).choose([cands], scores).tolist() == [int(np.argmax(slow))] == [1]
    # weighted by probability, a dominant candidate pulls the others toward it
    probs = np.exp(scores[0] - scores[0].max())
    slow_p = _by_loops(scorer, cands, list(probs))
    assert Consensus(scorer, "probability").choose([cands], scores).tolist() == [int(np.argmax(slow_p))]


def test_consensus_skips_empty_beams_and_keeps_a_lone_candidate() -> None:
    scorer = CiderD(CORPUS)
    cands = [[["a", "dog"], ["a", "cat"], ["x"]], [["a", "man"], [], []]]
    scores = np.array([[-1.0, -1.5, -np.inf], [-2.0, -np.inf, -np.inf]])
    got = Consensus(scorer).choose(cands, scores)
    assert got[0] in (0, 1) and got[1] == 0  # the -inf beam is never chosen; one candidate is kept


# A chain whose likeliest caption is "x" (then end), while many less likely captions share "y z".
OUTLIER_CHAIN = {START: {"x": 0.4, "y": 0.35, "z": 0.25}, "x": {END: 0.9, "y": 0.1},
                 "y": {"z": 0.9, END: 0.1}, "z": {END: 0.5, "y": 0.3, "z": 0.2}}


def test_beam_search_with_consensus_returns_the_consensus_candidate() -> None:
    chain, feats = Chain(OUTLIER_CHAIN), np.zeros((3, 1), np.float32)
    scorer = CiderD([[["x"]], [["y", "z"]], [["y"]], [["z", "z"]], [["w"]]])  # document frequencies of 5 images
    plain = beam_search(chain, feats, CHAIN_VOCAB, 4, 4)
    chosen = beam_search(chain, feats, CHAIN_VOCAB, 4, 4, consensus=Consensus(scorer))
    assert plain[0].words == ["x"]
    assert chosen[0].words != ["x"] and "y" in chosen[0].words and "z" in chosen[0].words
    assert chosen[0].logprob == pytest.approx(chain.score(chosen[0].words, True), abs=1e-5)  # its own score
    # through the decoding config: the same choice, and no n-grams is a clear error
    config = DecodingConfig(beam_width=4, max_length=4, rerank="consensus")
    assert generate_captions(chain, feats, CHAIN_VOCAB, config, progress=False, ngrams=scorer)[0].words == chosen[0].words
    with pytest.raises(DecodingError, match="n-gram document frequencies"):
        generate_captions(chain, feats, CHAIN_VOCAB, config, progress=False)


def test_the_config_refuses_consensus_without_candidates() -> None:
    with pytest.raises(DecodingError, match="beam_width >= 2"):
        DecodingConfig(beam_width=3).overridden(rerank="consensus", beam_width=1)
    with pytest.raises(DecodingError, match="rerank"):
        DecodingConfig.from_mapping({"beam_width": 3, "rerank": "mbr"}, "decoding.json")


def test_document_frequencies_survive_a_save_and_load(tmp_path) -> None:
    scorer = CiderD(CORPUS)
    scorer.save(tmp_path / "ngrams.npz")
    again = CiderD.load(tmp_path / "ngrams.npz")
    cands = [["a", "dog", "runs", "on", "grass"], ["a", "man", "on", "a", "bike"], ["unseen", "words", "here"]]
    refs = [[c.split() for c in ("a dog runs on the grass", "a dog on grass")]] * 3
    np.testing.assert_array_equal(scorer.score(cands, [0, 1, 2], scorer.references(refs)),
                                  again.score(cands, [0, 1, 2], again.references(refs)))
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz: not CIDEr-D document frequencies"):
        CiderD.load(tmp_path / "bad.npz")
