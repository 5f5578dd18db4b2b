"""Decoding: the step decoder, greedy and beam search, length penalty, n-gram blocking, max_length.

Besides the toy model, `Chain` is a hand-built step decoder whose next word depends only on
the previous one, so that exact answers (by exhaustive enumeration) and loops are easy to build.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from captioner.model.step import StepDecoder
from captioner.config.decoding import DecodingConfig
from captioner.decoding.search import beam_search, caption_texts, generate_captions
from captioner.datasets.text import END, PAD, START, UNK, Vocabulary
from tests.helpers.toy import COLOURS

CHAIN_VOCAB = Vocabulary((PAD, UNK, START, END, "x", "y", "z"))


class Chain:
    """A step decoder (same interface as StepDecoder) for a Markov chain over CHAIN_VOCAB words:
    `table[prev][next]` is a probability; unlisted transitions get `eps`, rows are normalised."""

    regions = 0

    def __init__(self, table: dict[str, dict[str, float]], eps: float = 1e-4) -> None:
        idx = CHAIN_VOCAB.index
        p = np.full((len(CHAIN_VOCAB), len(CHAIN_VOCAB)), eps)
        for prev, row in table.items():
            for nxt, prob in row.items():
                p[idx[prev], idx[nxt]] = prob
        self.logp = np.log(p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def start(self, features: np.ndarray):
        zeros = np.zeros((len(features), 1), np.float32)
        return zeros, zeros, zeros

    def step(self, image, words: np.ndarray, h: np.ndarray, c: np.ndarray):
        return self.logp[words].copy(), h, c, np.zeros((len(words), 0), np.float32)

    def score(self, words: list[str], ended: bool) -> float:
        """Sum of the log-probabilities of `words` (and of endseq after them if `ended`)."""
        ids = CHAIN_VOCAB.encode(" ".join([START, *words, *([END] if ended else [])]))
        return float(sum(self.logp[a, b] for a, b in zip(ids, ids[1:])))

    def best(self, max_length: int, alpha: float) -> tuple[list[str], float]:
        """The exact optimum over every caption of at most `max_length` words: (words, logprob).

        A caption shorter than max_length ends with endseq; one of max_length words ends if
        endseq is then the most likely word, else it is cut there (scored on its words only).
        Captions are ranked by logprob / ((5 + length) / 6) ** alpha, length counting endseq."""
        idx, words = CHAIN_VOCAB.index, CHAIN_VOCAB.tokens[4:]
        options = []
        for m in range(max_length + 1):
            for seq in itertools.product(words, repeat=m):
                last = self.logp[idx[seq[-1] if seq else START]].copy()
                last[:3] = -np.inf
                ended = m < max_length or int(last.argmax()) == idx[END]
                score = self.score(list(seq), ended)
                options.append((score / ((5 + m + ended) / 6) ** alpha, list(seq), score))
        _, seq, score = max(options, key=lambda o: o[0])
        return seq, score


def toy_score(dec: StepDecoder, feats: np.ndarray, vocab: Vocabulary, words: list[str], max_length: int) -> float:
    """Teacher-forced sum of the toy model's log-probabilities of `words`, plus that of endseq
    if the caption ended: shorter than max_length, or endseq most likely after its last word."""
    ids = vocab.encode(" ".join([START, *words]))
    img, h, c = dec.start(feats[None])
    total = 0.0
    for i, a in enumerate(ids):
        logp, h, c, _ = dec.step(img, np.array([a], np.int32), h, c)
        if i + 1 < len(ids):
            total += float(logp[0, ids[i + 1]])
    logp[0, :3] = -np.inf
    end = vocab.index[END]
    return total + (float(logp[0, end]) if len(words) < max_length or logp[0].argmax() == end else 0.0)


def test_step_decoder_matches_the_full_model(toy) -> None:
    model, feats, ids = toy["model"], toy["feats"][:4], toy["ids"][:4]
    full = tf.nn.log_softmax(model([feats, ids[:, :-1]])).numpy()
    dec = StepDecoder(model)
    img, h, c = dec.start(feats)
    assert not h.any() and not c.any()  # the merge LSTM starts from zeros
    for t in range(4):
        logp, h, c, alpha = dec.step(img, ids[:, t], h, c)
        assert alpha.shape == (4, 0)
        np.testing.assert_allclose(logp, full[:, t], atol=1e-4)


def test_greedy_names_the_right_colour(toy) -> None:
    dec = StepDecoder(toy["model"])
    caps = beam_search(dec, toy["feats"][:20], toy["vocab"], beam_width=1, max_length=10)
    for cap, cls in zip(caps, toy["cls"][:20]):
        assert COLOURS[cls] in cap.words and "endseq" not in cap.words


def test_greedy_equals_manual_argmax(toy) -> None:
    dec, vocab = StepDecoder(toy["model"]), toy["vocab"]
    feats = toy["feats"][:3]
    img, h, c = dec.start(feats)
    words = np.full(3, vocab.index["startseq"], np.int32)
    manual = [[] for _ in range(3)]
    scores = np.zeros(3)
    for _ in range(6):
        logp, h, c, _ = dec.step(img, words, h, c)
        logp[:, [0, 1, 2]] = -np.inf
        words = logp.argmax(1).astype(np.int32)
        for i, w in enumerate(words):
            if "endseq" not in manual[i]:
                scores[i] += logp[i, w]
            manual[i].append(vocab.tokens[w])
    got = beam_search(dec, feats, vocab, 1, 10)
    for m, g, s in zip(manual, got, scores):
        assert g.words == m[: m.index("endseq")]
        assert g.logprob == pytest.approx(s, abs=1e-4)  # the words' and endseq's log-probabilities


def test_beam_never_scores_below_greedy(toy) -> None:
    dec, vocab = StepDecoder(toy["model"]), toy["vocab"]
    feats = toy["feats"][:30]
    greedy = beam_search(dec, feats, vocab, 1, 10)
    beam = beam_search(dec, feats, vocab, 4, 10)
    assert all(b.logprob >= g.logprob - 1e-4 for b, g in zip(beam, greedy))


def test_max_length_and_batching(toy) -> None:
    dec, vocab = StepDecoder(toy["model"]), toy["vocab"]
    short = beam_search(dec, toy["feats"][:5], vocab, 3, max_length=2)
    assert all(len(c.words) <= 2 for c in short)
    batched = generate_captions(dec, toy["feats"][:7], vocab, DecodingConfig(beam_width=3, max_length=10),
                                batch_size=3, progress=False)
    whole = beam_search(dec, toy["feats"][:7], vocab, 3, 10)
    assert caption_texts(batched) == caption_texts(whole)
    assert [c.logprob for c in batched] == pytest.approx([c.logprob for c in whole], abs=1e-5)


# A short caption ("x") is the most likely; a longer one ("x y z") wins once normalised by
# length with alpha = 1.5, and loses again if the penalty is off or reversed.
LENGTH_CHAIN = {START: {"x": 0.9}, "x": {END: 0.5, "y": 0.45}, "y": {"z": 0.9}, "z": {END: 0.9}}


def test_length_penalty_chooses_the_best_normalised_caption() -> None:
    chain, feats = Chain(LENGTH_CHAIN), np.zeros((2, 1), np.float32)
    expected = {alpha: chain.best(3, alpha) for alpha in (0.0, 1.5, -1.5)}
    assert expected[0.0][0] == expected[-1.5][0] == ["x"] and expected[1.5][0] == ["x", "y", "z"]
    for alpha in (0.0, 1.5):
        words, score = expected[alpha]
        # width 64 keeps every hypothesis (at most 40 of 3 words or fewer): the search is exact
        for cap in beam_search(chain, feats, CHAIN_VOCAB, 64, 3, length_penalty=alpha):
            assert cap.words == words
            assert cap.logprob == pytest.approx(score, abs=1e-5)
    # A narrow beam keeps both endings too, and the penalty picks among them.
    assert beam_search(chain, feats, CHAIN_VOCAB, 2, 3, length_penalty=1.5)[0].words == ["x", "y", "z"]
    assert beam_search(chain, feats, CHAIN_VOCAB, 2, 3, length_penalty=0.0)[0].words == ["x"]


def test_repeated_ngram_bans() -> None:
    from captioner.decoding.search import repeated_ngram_bans

    rows, toks = repeated_ngram_bans(np.array([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]]), 3)
    assert rows.tolist() == [0] and toks.tolist() == [7]
    rows, toks = repeated_ngram_bans(np.array([[4, 4, 4]]), 2)  # bigram "4 4" seen twice
    assert rows.tolist() == [0, 0] and toks.tolist() == [4, 4]
    assert repeated_ngram_bans(np.zeros((2, 0), np.int32), 3)[0].size == 0


# Greedy loops "x y x y x y ..." unless blocked; "z" then "endseq" is the way out.
LOOP_CHAIN = {START: {"x": 0.9}, "x": {"y": 0.8, "z": 0.1}, "y": {"x": 0.8, "z": 0.1}, "z": {END: 0.8}}


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


@pytest.mark.parametrize("width", [1, 3])
def test_blocking_stops_a_looping_decoder_from_repeating(width: int) -> None:
    chain, feats = Chain(LOOP_CHAIN), np.zeros((2, 1), np.float32)
    free = beam_search(chain, feats, CHAIN_VOCAB, width, 8)
    for cap in free:  # without blocking, the loop fills max_length and repeats every n-gram
        assert cap.words == ["x", "y"] * 4
        assert cap.logprob == pytest.approx(chain.score(cap.words, ended=False), abs=1e-5)
    # greedy leaves the loop as late as blocking lets it; a wider beam may leave it earlier
    greedy = {1: ["x", "y", "z"], 2: ["x", "y", "x", "z"], 3: ["x", "y", "x", "y", "z"]}
    for n, words in greedy.items():
        for cap in beam_search(chain, feats, CHAIN_VOCAB, width, 8, block_repeat_ngram=n):
            grams = _ngrams(cap.words, n)
            assert len(grams) == len(set(grams)), (n, cap.words)
            assert cap.words[-1] == "z"  # ended through the way out
            assert cap.logprob == pytest.approx(chain.score(cap.words, ended=True), abs=1e-5)
            if width == 1:
                assert cap.words == words
            else:
                assert cap.logprob >= chain.score(words, ended=True) - 1e-5


def test_blocking_on_the_toy_model_changes_nothing_it_need_not(toy) -> None:
    dec, vocab, feats = StepDecoder(toy["model"]), toy["vocab"], toy["feats"][:10]
    plain = beam_search(dec, feats, vocab, 3, 12)
    blocked = beam_search(dec, feats, vocab, 3, 12, block_repeat_ngram=2)
    assert caption_texts(blocked) == caption_texts(plain)  # the toy captions repeat no bigram


# The chain never ends a caption (endseq has probability 1e-4 everywhere); after "x" the next
# word is uncertain, after "y" it is nearly sure, so scoring a cut-off word changes the score.
ENDLESS_CHAIN = {
    START: {"x": 0.5, "y": 0.4, "z": 0.09},
    "x": {"x": 0.3, "y": 0.3, "z": 0.39},
    "y": {"z": 0.97, "x": 0.01, "y": 0.01},
    "z": {"x": 0.5, "y": 0.4, "z": 0.09},
}


@pytest.mark.parametrize("width", [1, 3, 16])
@pytest.mark.parametrize("max_length", [0, 1, 2])
def test_score_is_that_of_the_returned_words_at_max_length(width: int, max_length: int) -> None:
    chain, feats = Chain(ENDLESS_CHAIN), np.zeros((2, 1), np.float32)
    for alpha in (0.0, 1.0):
        for cap in beam_search(chain, feats, CHAIN_VOCAB, width, max_length, length_penalty=alpha):
            assert len(cap.words) == max_length  # cut, never ended
            assert cap.logprob == pytest.approx(chain.score(cap.words, ended=False), abs=1e-5)
            if width == 16:  # keeps every hypothesis of <= 2 words (at most 13): exact
                words, score = chain.best(max_length, alpha)
                assert cap.words == words and cap.logprob == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("max_length", [2, 3, 10])
def test_toy_score_is_that_of_the_returned_words(toy, width: int, max_length: int) -> None:
    """max_length 2 cuts every caption; at 3, "a <colour> thing" ends exactly at the limit."""
    dec, vocab, feats = StepDecoder(toy["model"]), toy["vocab"], toy["feats"][:6]
    caps = beam_search(dec, feats, vocab, width, max_length)
    for cap, f in zip(caps, feats):
        assert len(cap.words) == min(max_length, 3) or len(cap.words) == 5 and max_length == 10
        assert cap.logprob == pytest.approx(toy_score(dec, f, vocab, cap.words, max_length), abs=1e-4)


def test_ensemble_of_one_model_twice_equals_the_model(toy) -> None:
    dec1, dec2 = StepDecoder(toy["model"]), StepDecoder([toy["model"], toy["model"]])
    assert dec2.units == 2 * dec1.units
    feats, vocab = toy["feats"][:6], toy["vocab"]
    one = beam_search(dec1, feats, vocab, 3, 10)
    two = beam_search(dec2, feats, vocab, 3, 10)
    assert caption_texts(one) == caption_texts(two)
    assert [c.logprob for c in one] == pytest.approx([c.logprob for c in two], abs=1e-4)


def test_ensemble_members_must_agree(toy) -> None:
    from captioner.model.build import build_merge_model

    other = build_merge_model(len(toy["vocab"]) + 1, 8, 4, 4, 0.0)
    with pytest.raises(ValueError, match="disagree"):
        StepDecoder([toy["model"], other])


def test_a_member_reads_only_its_feature_view(toy) -> None:
    """views: the toy model reading columns 5..13 of [noise | its features] decodes exactly as
    it does from its own features, whatever the noise."""
    feats, vocab = toy["feats"][:6], toy["vocab"]
    noise = np.random.default_rng(3).normal(size=(6, 5)).astype(np.float32) * 10
    own = beam_search(StepDecoder(toy["model"]), feats, vocab, 3, 10)
    viewed = beam_search(StepDecoder([toy["model"]], views=[(5, 13)]), np.hstack([noise, feats]), vocab, 3, 10)
    assert caption_texts(viewed) == caption_texts(own)
    assert [c.logprob for c in viewed] == pytest.approx([c.logprob for c in own], abs=1e-5)
    # columns after the view (another member's, left out of a sub-ensemble) are ignored too
    wider = beam_search(StepDecoder([toy["model"]], views=[(5, 13)]), np.hstack([noise, feats, noise]), vocab, 3, 10)
    assert caption_texts(wider) == caption_texts(own)


def test_members_on_different_features_average_their_probabilities(toy) -> None:
    """An ensemble whose members read different feature files (here widths 8 and 3) averages
    the next-word probabilities each member gives from its own features."""
    from captioner.model.build import build_merge_model

    other = build_merge_model(len(toy["vocab"]), 3, 8, 16, 0.0)
    f, g = toy["feats"][:5], np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    both = StepDecoder([toy["model"], other], views=[(0, 8), (8, 11)])
    words = np.full(5, toy["vocab"].index[START], np.int32)
    img, h, c = both.start(np.hstack([f, g]))
    logp = both.step(img, words, h, c)[0]
    singles = []
    for dec, x in ((StepDecoder(toy["model"]), f), (StepDecoder(other), g)):
        img, h, c = dec.start(x)
        singles.append(np.exp(dec.step(img, words, h, c)[0]))
    np.testing.assert_allclose(np.exp(logp), np.mean(singles, axis=0), atol=1e-6)


def test_a_merge_member_averages_a_grid_view_and_bad_views_are_refused(toy, toy_attention) -> None:
    from captioner.model.build import build_merge_model
    from tests.helpers.toy import TOY_CHANNELS, TOY_REGIONS

    att, grid = toy_attention["model"], toy_attention["feats"][:4].astype(np.float32)
    merge = build_merge_model(len(toy_attention["vocab"]), TOY_CHANNELS, 8, 32, 0.0)
    pooled = grid.reshape(4, TOY_REGIONS, TOY_CHANNELS).mean(axis=1)
    mixed = StepDecoder([att, merge], views=[(0, 32), (0, 32)])  # the merge member pools the grid
    assert mixed.regions == TOY_REGIONS
    img, _, _ = mixed.start(grid)
    img_pooled, _, _ = StepDecoder(merge).start(pooled)
    np.testing.assert_allclose(img.numpy()[:, -32:], img_pooled.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="cannot read a feature view of width 7"):
        StepDecoder([toy["model"]], views=[(1, 8)])
    with pytest.raises(ValueError, match="2 feature views for 1"):
        StepDecoder([toy["model"]], views=[(0, 8), (8, 16)])


def test_attention_members_on_different_grids_share_the_words_not_the_map(toy_attention) -> None:
    """Over views, attention members may attend over different grids (Lite0's 7x7 with Lite1's
    8x8): both choose the words (their probabilities averaged) and the attention weights are
    the first member's grid's."""
    from captioner.model.build import build_attention_model
    from tests.helpers.toy import TOY_CHANNELS, TOY_REGIONS

    att, vocab = toy_attention["model"], toy_attention["vocab"]
    import keras

    keras.utils.set_random_seed(5)
    finer = build_attention_model(len(vocab), 9, TOY_CHANNELS, 16, 32, 16, 0.1, 0.1)  # a 3x3 grid
    grid = toy_attention["feats"][:4].astype(np.float32)
    nine = np.random.default_rng(6).normal(size=(4, 9 * TOY_CHANNELS)).astype(np.float32)
    width = TOY_REGIONS * TOY_CHANNELS
    both = StepDecoder([att, finer], views=[(0, width), (width, width + 9 * TOY_CHANNELS)])
    assert both.regions == TOY_REGIONS
    words = np.full(4, vocab.index[START], np.int32)
    img, h, c = both.start(np.hstack([grid, nine]))
    logp, _, _, alpha = both.step(img, words, h, c)
    singles = []
    for dec, x in ((StepDecoder(att), grid), (StepDecoder(finer), nine)):
        img, h, c = dec.start(x)
        singles.append(dec.step(img, words, h, c))
    np.testing.assert_allclose(np.exp(logp), np.mean([np.exp(s[0]) for s in singles], axis=0), atol=1e-6)
    np.testing.assert_allclose(alpha, singles[0][3], atol=1e-6)
    assert alpha.shape == (4, TOY_REGIONS)
