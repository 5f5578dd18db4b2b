"""captioner.decoding.cider: the vectorised CIDEr-D equals pycocoevalcap's Cider on fixed examples."""

from __future__ import annotations

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from captioner.decoding.cider import CiderD, cider_d

REFS = {
    "dog": ["a black dog runs across the grass", "a dog is running on a lawn", "the black dog runs",
            "a dog plays in the green grass", "a black and white dog running outside"],
    "beach": ["two children play on the beach", "kids playing in the sand near the water",
              "two kids on a sandy beach", "children are playing at the beach", "two young children dig in the sand"],
    "bike": ["a man rides a bike down the street", "a cyclist on a city street", "a man riding a bicycle",
             "a person rides a bike past a building", "a man on a bike in the city"],
    "snow": ["a skier goes down a snowy hill", "a person skiing on a mountain", "a skier in the snow",
             "someone skis down the slope", "a man skiing down a snowy mountain"],
    "cat": ["a cat sleeps on a red couch", "a grey cat lying on a sofa", "a cat asleep on the couch",
            "the cat is sleeping", "a small cat on a red sofa"],
    "crowd": ["a crowd of people at a concert", "many people watch a band play", "a large crowd at a show",
              "people stand in a crowd", "an audience watches a concert"],
}
# repeated words, unknown words, one word, empty, a reference copied, one caption for two images
CANDIDATES = {
    "dog": "a black dog dog dog runs across the the grass",
    "beach": "two children play on the beach",
    "bike": "a zebra rides a unicycle down the street street",
    "snow": "skier",
    "cat": "",
    "crowd": "a crowd of people at a concert a crowd of people at a concert with a xylophone",
}


def _coco(refs: dict[str, list[str]], cands: dict[str, str]) -> tuple[float, np.ndarray]:
    score, scores = Cider().compute_score({k: list(v) for k, v in refs.items()}, {k: [c] for k, c in cands.items()})
    return float(score), np.asarray(scores, np.float64)


def test_cider_d_equals_pycocoevalcap_on_a_fixed_example() -> None:
    want_mean, want = _coco(REFS, CANDIDATES)
    got_mean, got = cider_d(REFS, CANDIDATES)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert abs(got_mean - want_mean) < 1e-6
    assert want[1] > 2.5 and want[4] == 0 and (want > 0).sum() == 5  # the example exercises real scores


def test_cider_d_equals_pycocoevalcap_on_every_reference_held_out() -> None:
    """Each image's r-th reference scored against all five (the candidate shares 4-grams with one)."""
    for r in range(5):
        cands = {k: v[r] for k, v in REFS.items()}
        np.testing.assert_allclose(cider_d(REFS, cands)[1], _coco(REFS, cands)[1], rtol=0, atol=1e-6)


def test_several_candidates_per_image_with_fixed_document_frequencies() -> None:
    """K samples per image scored in one call (images repeated) = K pycocoevalcap runs."""
    keys = list(REFS)
    scorer = CiderD([[r.split() for r in REFS[k]] for k in keys])
    refs = scorer.references([[r.split() for r in REFS[k]] for k in keys])
    rounds = [CANDIDATES, {k: REFS[k][0] for k in keys}, {k: "a dog on the beach with a bike" for k in keys}]
    cands = [rnd[k].split() for rnd in rounds for k in keys]
    got = scorer.score(cands, np.tile(np.arange(len(keys)), len(rounds)), refs)
    want = np.concatenate([_coco(REFS, rnd)[1] for rnd in rounds])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_train_corpus_frequencies_score_a_subset_of_images() -> None:
    """Document frequencies from a larger corpus (as SCST's train references): the same as
    pycocoevalcap over the whole corpus, read at the images scored."""
    keys = list(REFS)
    scorer = CiderD([[r.split() for r in REFS[k]] for k in keys])
    some = ["bike", "dog", "bike"]
    refs = scorer.references([[r.split() for r in REFS[k]] for k in ("dog", "bike")])
    cands = ["a man rides a dog", "a black dog runs", "a man rides a bike in the city"]
    got = scorer.score([c.split() for c in cands], [1, 0, 1], refs)
    for i, (key, cand) in enumerate(zip(some, cands)):
        full = {k: CANDIDATES[k] for k in keys} | {key: cand}
        assert abs(got[i] - _coco(REFS, full)[1][keys.index(key)]) < 1e-6


def test_id_arrays_score_like_token_lists_and_ignore_what_follows_the_length() -> None:
    keys = list(REFS)
    corpus = [[r.split() for r in REFS[k]] for k in keys]
    scorer = CiderD(corpus)
    refs = scorer.references(corpus)
    cands = [CANDIDATES[k].split() for k in keys]
    want = scorer.score(cands, np.arange(6), refs)
    lengths = np.array([len(c) for c in cands])
    ids = np.full((6, lengths.max() + 3), int(scorer.word_ids(["grass"])[0]))  # junk after each caption
    for i, c in enumerate(cands):
        ids[i, : len(c)] = scorer.word_ids(c)
    np.testing.assert_allclose(scorer.score_ids(ids, lengths, np.arange(6), refs), want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="word id unknown"):
        scorer.score_ids(np.array([[10**6]]), np.array([1]), [0], refs)


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="non-empty reference corpus"):
        CiderD([])
    scorer = CiderD([[["a", "dog"]]])
    with pytest.raises(ValueError, match="image 1 has no reference caption"):
        scorer.references([[["a"]], []])
    with pytest.raises(ValueError, match="out of range"):
        scorer.score([["a"]], [3], scorer.references([[["a", "dog"]]]))
    with pytest.raises(ValueError, match="same images"):
        cider_d({"a": ["x"]}, {"b": "x"})
