"""The attention decoder (model.kind: attention): model, training, step decoding, beam search."""

import numpy as np
import pytest
import tensorflow as tf

from captioner.model.step import StepDecoder
from captioner.decoding.search import beam_search
from captioner.model.build import build_attention_model, load_model, model_kind, model_signature
from captioner.datasets.text import END_ID
from captioner.training.fit import compile_model
from captioner.training.batches import make_dataset
from tests.helpers.toy import COLOURS, TOY_CHANNELS, TOY_REGIONS


def test_shapes_signature_and_kind() -> None:
    model = build_attention_model(30, regions=6, channels=5, embedding_dim=8, units=16,
                                  attention_dim=12, dropout=0.5, attention_reg=1.0)
    out = model([np.zeros((2, 30), np.float32), np.ones((2, 7), np.int32)])
    assert out.shape == (2, 7, 30)
    assert model_signature(model) == (30, 30)
    assert model_kind(model) == "attention"


def test_doubly_stochastic_penalty_is_in_the_loss_and_ignores_padding() -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((4, 6 * 5)).astype(np.float32)
    ids = rng.integers(4, 20, (4, 6)).astype(np.int32)
    ids[:, -1] = END_ID  # the real shape of a caption: words, then endseq, then padding
    padded = np.pad(ids, ((0, 0), (0, 5)))
    losses = {}
    for reg in (0.0, 5.0):
        model = build_attention_model(20, 6, 5, 8, 8, 8, 0.0, reg)
        compile_model(model, 1e-3)
        short = model.evaluate([feats, ids[:, :-1]], ids[:, 1:], verbose=0, return_dict=True)["loss"]
        long = model.evaluate([feats, padded[:, :-1]], padded[:, 1:], verbose=0, return_dict=True)["loss"]
        assert long == pytest.approx(short, rel=1e-5)  # padding reaches neither loss nor penalty
        losses[reg] = short
    # Same seeds, same weights: the penalty (5 words over 6 regions cannot cover each once) adds.
    assert losses[5.0] > losses[0.0]


def test_training_learns_the_toy_task(toy_attention) -> None:
    r, ids, feats = toy_attention["result"], toy_attention["ids"], toy_attention["feats"]
    assert r.history["val_masked_accuracy"][r.best_epoch - 1] > 0.9
    # the model holds its best epoch's weights: re-evaluated, it scores that epoch's loss and accuracy
    val = make_dataset(ids, np.arange(len(ids)), feats, 16, 2, seed=None)
    got = toy_attention["model"].evaluate(val, verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(r.best_val_loss, rel=1e-5)
    assert got["masked_accuracy"] == pytest.approx(r.history["val_masked_accuracy"][r.best_epoch - 1], abs=1e-6)


def test_save_load_roundtrip_in_safe_mode(tmp_path, toy_attention) -> None:
    path = tmp_path / "att.keras"
    toy_attention["model"].save(path)
    dim = TOY_REGIONS * TOY_CHANNELS
    model = load_model(str(path), dim, len(toy_attention["vocab"]))
    x = [toy_attention["feats"][:3].astype(np.float32), toy_attention["ids"][:3, :-1]]
    np.testing.assert_allclose(model(x).numpy(), toy_attention["model"](x).numpy(), atol=1e-6)
    assert model_kind(model) == "attention"
    with pytest.raises(ValueError, match=f"expects {dim}-d image features but the features have 1280"):
        load_model(str(path), 1280)


def test_step_decoder_matches_the_full_model(toy_attention) -> None:
    model, ids = toy_attention["model"], toy_attention["ids"][:5]
    feats = toy_attention["feats"][:5].astype(np.float32)
    full = tf.nn.log_softmax(model([feats, ids[:, :-1]])).numpy()
    dec = StepDecoder(model)
    assert dec.regions == TOY_REGIONS
    img, h, c = dec.start(feats)
    assert h.any()  # the LSTM starts from the mean region, not from zeros
    for t in range(4):
        logp, h, c, alpha = dec.step(img, ids[:, t], h, c)
        np.testing.assert_allclose(logp, full[:, t], atol=1e-4)
        assert alpha.shape == (5, TOY_REGIONS)
        np.testing.assert_allclose(alpha.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("width", [1, 3])
def test_beam_search_names_the_colour_and_keeps_attention(toy_attention, width) -> None:
    dec = StepDecoder(toy_attention["model"])
    feats = toy_attention["feats"][:40].astype(np.float32)
    caps = beam_search(dec, feats, toy_attention["vocab"], beam_width=width, max_length=8, attention=True)
    right = sum(COLOURS[c] in cap.words for cap, c in zip(caps, toy_attention["cls"][:40]))
    assert right >= 36
    for cap in caps:
        assert cap.attention.shape == (len(cap.words), TOY_REGIONS)
        np.testing.assert_allclose(cap.attention.sum(1), 1.0, atol=1e-5)
    assert beam_search(dec, feats[:2], toy_attention["vocab"], width, 8)[0].attention is None  # not asked


def test_attention_looks_at_the_coloured_region(toy_attention) -> None:
    """When it names the colour, the model's attention peaks on the region that holds it."""
    dec = StepDecoder(toy_attention["model"])
    feats = toy_attention["feats"][:80].astype(np.float32)
    caps = beam_search(dec, feats, toy_attention["vocab"], 1, 8, attention=True)
    hits, total = 0, 0
    for cap, c, where in zip(caps, toy_attention["cls"][:80], toy_attention["where"][:80]):
        if COLOURS[c] in cap.words:
            total += 1
            hits += int(cap.attention[cap.words.index(COLOURS[c])].argmax() == where)
    assert total >= 70 and hits / total > 0.5  # chance is 1/4


def test_ensemble_of_attention_models_and_mismatch(toy_attention, toy) -> None:
    model = toy_attention["model"]
    feats = toy_attention["feats"][:10].astype(np.float32)
    single = beam_search(StepDecoder(model), feats, toy_attention["vocab"], 2, 8)
    double = beam_search(StepDecoder([model, model]), feats, toy_attention["vocab"], 2, 8, attention=True)
    assert [c.words for c in double] == [c.words for c in single]  # averaging a model with itself
    assert [c.logprob for c in double] == pytest.approx([c.logprob for c in single], abs=1e-4)
    with pytest.raises(ValueError, match="disagree"):
        StepDecoder([model, toy["model"]])


def test_mixed_ensemble_merge_members_see_the_pooled_grid(toy_attention) -> None:
    """A merge model (pooled features) can join attention models (region grids): it is fed the
    grid's average over regions, which is what the pooled feature is."""
    from captioner.model.build import build_merge_model

    att, vocab = toy_attention["model"], toy_attention["vocab"]
    merge = build_merge_model(len(vocab), TOY_CHANNELS, 8, 16, 0.0)
    grid = toy_attention["feats"][:6].astype(np.float32)
    pooled = grid.reshape(6, TOY_REGIONS, TOY_CHANNELS).mean(1)
    words = np.full(6, vocab.index["startseq"], np.int32)
    mixed, alone_att, alone_merge = StepDecoder([att, merge]), StepDecoder(att), StepDecoder(merge)
    assert mixed.regions == TOY_REGIONS
    logps = []
    for dec, feats in ((mixed, grid), (alone_att, grid), (alone_merge, pooled)):
        img, h, c = dec.start(feats)
        logps.append(dec.step(img, words, h, c)[0])
    expected = np.logaddexp(logps[1], logps[2]) - np.log(2.0)
    np.testing.assert_allclose(logps[0], expected, atol=1e-5)


def test_merge_model_over_a_grid_averages_it(toy_attention) -> None:
    """A merge member of an attention ensemble reads the grid file and pools it itself."""
    from captioner.model.build import build_merge_model

    vocab = toy_attention["vocab"]
    over_grid = build_merge_model(len(vocab), TOY_CHANNELS, 8, 16, 0.0, regions=TOY_REGIONS)
    pooled = build_merge_model(len(vocab), TOY_CHANNELS, 8, 16, 0.0)
    pooled.set_weights(over_grid.get_weights())
    assert model_signature(over_grid) == (TOY_REGIONS * TOY_CHANNELS, len(vocab)) and model_kind(over_grid) == "merge"
    grid = toy_attention["feats"][:5].astype(np.float32)
    mean = grid.reshape(5, TOY_REGIONS, TOY_CHANNELS).mean(1)
    ids = toy_attention["ids"][:5, :-1]
    np.testing.assert_allclose(over_grid([grid, ids]).numpy(), pooled([mean, ids]).numpy(), atol=1e-5)
    # Decoded with an attention member, it is fed the grid as is.
    words = np.full(5, vocab.index["startseq"], np.int32)
    dec, ref = StepDecoder([toy_attention["model"], over_grid]), StepDecoder([toy_attention["model"], pooled])
    img, h, c = dec.start(grid)
    img2, h2, c2 = ref.start(grid)  # the pooled model, averaged by the decoder
    np.testing.assert_allclose(dec.step(img, words, h, c)[0], ref.step(img2, words, h2, c2)[0], atol=1e-5)
