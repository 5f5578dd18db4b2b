import numpy as np
import pytest
import tensorflow as tf

from captioner.decoding import StepDecoder, beam_search, caption_texts, generate_captions
from tests.conftest import COLOURS


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
    for _ in range(6):
        logp, h, c, _ = dec.step(img, words, h, c)
        logp[:, [0, 1, 2]] = -np.inf
        words = logp.argmax(1).astype(np.int32)
        for i, w in enumerate(words):
            manual[i].append(vocab.tokens[w])
    got = beam_search(dec, feats, vocab, 1, 10)
    for m, g in zip(manual, got):
        assert g.words == m[: m.index("endseq")]


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
    batched = generate_captions(dec, toy["feats"][:7], vocab, 3, 10, 0.0, batch_size=3, progress=False)
    whole = beam_search(dec, toy["feats"][:7], vocab, 3, 10)
    assert caption_texts(batched) == caption_texts(whole)
    assert [c.logprob for c in batched] == pytest.approx([c.logprob for c in whole], abs=1e-5)


def test_length_penalty_prefers_longer_captions(toy) -> None:
    dec, vocab = StepDecoder(toy["model"]), toy["vocab"]
    plain = beam_search(dec, toy["feats"][:40], vocab, 5, 10, length_penalty=0.0)
    long = beam_search(dec, toy["feats"][:40], vocab, 5, 10, length_penalty=2.0)
    assert sum(len(c.words) for c in long) >= sum(len(c.words) for c in plain)


def test_repeated_ngram_bans() -> None:
    from captioner.decoding import repeated_ngram_bans

    rows, toks = repeated_ngram_bans(np.array([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]]), 3)
    assert rows.tolist() == [0] and toks.tolist() == [7]
    rows, toks = repeated_ngram_bans(np.array([[4, 4, 4]]), 2)  # bigram "4 4" seen twice
    assert rows.tolist() == [0, 0] and toks.tolist() == [4, 4]
    assert repeated_ngram_bans(np.zeros((2, 0), np.int32), 3)[0].size == 0


def test_blocking_removes_repeats(toy) -> None:
    dec, vocab = StepDecoder(toy["model"]), toy["vocab"]
    caps = beam_search(dec, toy["feats"][:10], vocab, 3, 12, block_repeat_ngram=1)
    for cap in caps:
        assert len(cap.words) == len(set(cap.words)), cap.words


def test_ensemble_of_one_model_twice_equals_the_model(toy) -> None:
    dec1, dec2 = StepDecoder(toy["model"]), StepDecoder([toy["model"], toy["model"]])
    assert dec2.units == 2 * dec1.units
    feats, vocab = toy["feats"][:6], toy["vocab"]
    one = beam_search(dec1, feats, vocab, 3, 10)
    two = beam_search(dec2, feats, vocab, 3, 10)
    assert caption_texts(one) == caption_texts(two)
    assert [c.logprob for c in one] == pytest.approx([c.logprob for c in two], abs=1e-4)


def test_ensemble_members_must_agree(toy) -> None:
    from captioner.model import build_merge_model

    other = build_merge_model(len(toy["vocab"]) + 1, 8, 4, 4, 0.0)
    with pytest.raises(ValueError, match="disagree"):
        StepDecoder([toy["model"], other])
