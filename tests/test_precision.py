"""train.precision: mixed_bfloat16 training, float32 losses, float32 saved models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioner.decoding import StepDecoder, beam_search
from captioner.model import build_attention_model, build_merge_model, load_model
from captioner.params import Params
from captioner.training import dtype_policy, float32_copy
from tests.conftest import COLOURS, TOY_CHANNELS, TOY_REGIONS, fit_toy


def test_dtype_policy_is_scoped_and_restored() -> None:
    assert keras.config.dtype_policy().name == "float32"
    with dtype_policy("mixed_bfloat16"):
        dense = keras.layers.Dense(2)
    assert dense.compute_dtype == "bfloat16" and dense.variable_dtype == "float32"
    with pytest.raises(RuntimeError), dtype_policy("mixed_bfloat16"):
        raise RuntimeError("a failing build")
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])  # keras' loss and ours
def test_mixed_bfloat16_merge_learns_and_saves_a_float32_model(tmp_path, toy, label_smoothing) -> None:
    ids, feats, vocab = toy["ids"], toy["feats"], toy["vocab"]

    def build() -> keras.Model:
        return build_merge_model(len(vocab), 8, 16, 32, 0.1)

    keras.utils.set_random_seed(0)
    with dtype_policy("mixed_bfloat16"):
        mixed = build()
    assert mixed.get_layer("logits").compute_dtype == "bfloat16"
    result = fit_toy(mixed, ids, feats, epochs=12, label_smoothing=label_smoothing)
    losses = result.history["val_loss"]
    assert all(np.isfinite(losses)) and losses[result.best_epoch - 1] < 0.6 * losses[0]

    saved = float32_copy(mixed, build)
    assert {la.compute_dtype for la in saved.layers if la.weights} == {"float32"}
    for a, b in zip(mixed.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(a, b)
    saved.save(tmp_path / "model.keras")
    model = load_model(str(tmp_path / "model.keras"), 8, len(vocab))
    # Same weights; only the arithmetic differs (bfloat16 keeps 8 bits of mantissa).
    x = [feats[:8], ids[:8, :-1]]
    f32 = model(x).numpy()
    bf16 = tf.cast(mixed(x), tf.float32).numpy()
    assert np.abs(f32 - bf16).max() < 0.1 * np.abs(f32).max()
    caps = beam_search(StepDecoder(model), feats[:20], vocab, beam_width=3, max_length=10)
    right = sum(COLOURS[c] in cap.words for cap, c in zip(caps, toy["cls"][:20]))
    assert right >= 18


def test_mixed_bfloat16_attention_trains_with_a_float32_penalty(toy_attention) -> None:
    ids, feats, vocab = toy_attention["ids"], toy_attention["feats"], toy_attention["vocab"]

    def build() -> keras.Model:
        return build_attention_model(len(vocab), TOY_REGIONS, TOY_CHANNELS, 16, 32, 16, 0.1, 0.1)

    keras.utils.set_random_seed(0)
    with dtype_policy("mixed_bfloat16"):
        mixed = build()
    result = fit_toy(mixed, ids, feats, epochs=10)
    losses = result.history["val_loss"]
    assert all(np.isfinite(losses)) and losses[result.best_epoch - 1] < 0.6 * losses[0]
    saved = float32_copy(mixed, build)
    caps = beam_search(StepDecoder(saved), feats[:20], vocab, beam_width=1, max_length=8, attention=True)
    assert sum(COLOURS[c] in cap.words for cap, c in zip(caps, toy_attention["cls"][:20])) >= 16
    np.testing.assert_allclose(caps[0].attention.sum(axis=1), 1.0, atol=1e-5)


def test_precision_param_is_checked() -> None:
    assert Params().train.precision == "float32"
    assert Params.model_validate({"train": {"precision": "mixed_bfloat16"}}).train.precision == "mixed_bfloat16"
    with pytest.raises(ValueError, match="precision"):
        Params.model_validate({"train": {"precision": "float16"}})
