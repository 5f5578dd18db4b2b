"""train.precision: mixed_bfloat16 training, float32 losses, float32 saved models; `auto`'s choice."""

from pathlib import Path
from typing import get_args

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioner.model.step import StepDecoder
from captioner.decoding.search import beam_search
from captioner.model.build import build_attention_model, build_merge_model, load_model
from captioner.config.params import Params, TrainParams
from captioner.training.precision import BF16_FLAGS, PRECISIONS, cpu_flags, describe_devices, gpu_count, resolve_precision
from captioner.training.fit import dtype_policy, float32_copy
from tests.helpers.toy import COLOURS, TOY_CHANNELS, TOY_REGIONS, fit_toy


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
    for name in PRECISIONS:
        assert Params.model_validate({"train": {"precision": name}}).train.precision == name
    with pytest.raises(ValueError, match="precision"):
        Params.model_validate({"train": {"precision": "float16"}})
    assert set(get_args(TrainParams.model_fields["precision"].annotation)) == set(PRECISIONS)


# ------------------------------------------------------------------ train.precision: auto

@pytest.mark.parametrize(
    ("gpus", "flags", "expected"),
    [
        (1, set(), "mixed_float16"),
        (8, {"avx512_bf16", "amx_bf16"}, "mixed_float16"),  # a GPU wins over bfloat16 CPUs
        (0, {"avx512f", "avx512_bf16"}, "mixed_bfloat16"),  # Cooper Lake, Zen 4, this machine
        (0, {"amx_tile", "amx_bf16", "amx_int8"}, "mixed_bfloat16"),  # AMX (Sapphire Rapids)
        (0, {"avx512f", "avx2", "amx_tile"}, "float32"),  # AMX without bf16 is not enough
        (0, {"avx2", "fma"}, "float32"),
        (0, set(), "float32"),  # macOS, Windows: no /proc/cpuinfo
    ],
)
def test_auto_picks_by_gpus_then_cpu_flags(gpus: int, flags: set[str], expected: str) -> None:
    assert resolve_precision("auto", gpus=gpus, cpu_flags=flags) == expected


def test_explicit_precisions_are_kept() -> None:
    for name in ("float32", "mixed_bfloat16"):
        assert resolve_precision(name, gpus=1, cpu_flags=set()) == name
        assert resolve_precision(name, gpus=0, cpu_flags=set()) == name
    assert resolve_precision("mixed_float16", gpus=2, cpu_flags=set()) == "mixed_float16"
    with pytest.warns(RuntimeWarning, match="without a GPU"):
        assert resolve_precision("mixed_float16", gpus=0, cpu_flags={"avx512_bf16"}) == "mixed_float16"
    with pytest.raises(ValueError, match="'float16' is not one of auto"):
        resolve_precision("float16", gpus=0, cpu_flags=set())


def test_cpu_flags_read_proc_cpuinfo(tmp_path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu AVX512_BF16 avx2\n\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(x86) == {"fpu", "avx512_bf16", "avx2"}  # the first CPU's, lower case
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == set()
    assert resolve_precision("auto", gpus=0, cpu_flags=cpu_flags(arm)) == "float32"  # x86 flags only


def test_this_machine_is_detected_not_assumed() -> None:
    """On this project's machines (no GPU; a CPU with avx512_bf16, no AMX) auto detects
    mixed_bfloat16; elsewhere it must agree with what /proc/cpuinfo and TensorFlow say."""
    flags = cpu_flags()
    gpus = len(tf.config.list_physical_devices("GPU"))
    assert gpu_count() == gpus
    # what docs/GPU.md promises, from the machine's own words (not from the code's flag set)
    words = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    bf16 = "avx512_bf16" in words or "amx_bf16" in words
    assert resolve_precision("auto") == ("mixed_float16" if gpus else "mixed_bfloat16" if bf16 else "float32")
    assert ("avx512_bf16" in words) == ("avx512_bf16" in flags)
    assert ("amx_bf16" in words) == ("amx_bf16" in flags)
    line = describe_devices()
    assert line.startswith("devices: ") and "\n" not in line and "TensorFlow " + tf.__version__ in line
    assert ("no GPU" in line) == (gpus == 0)
    assert ("bfloat16 flags" in line) == bool(flags & BF16_FLAGS)


def test_auto_on_this_machines_cpu_branches() -> None:
    """The CPU branches with this machine's real flags: with its bfloat16 flags (as found) and
    with them taken away (what a CPU without them gives)."""
    flags = cpu_flags()
    with_bf16, without = flags | {"avx512_bf16"}, flags - BF16_FLAGS
    assert resolve_precision("auto", gpus=0) == ("mixed_bfloat16" if flags & BF16_FLAGS else "float32")
    assert resolve_precision("auto", gpus=0, cpu_flags=with_bf16) == "mixed_bfloat16"
    assert resolve_precision("auto", gpus=0, cpu_flags=without) == "float32"


def test_mixed_float16_merge_learns_on_a_cpu_and_saves_a_float32_model(toy) -> None:
    """What auto picks on a GPU, checked where there is none: Keras scales the float16 loss
    (LossScaleOptimizer from compile), training converges, the saved copy is float32."""
    ids, feats, vocab = toy["ids"], toy["feats"], toy["vocab"]

    def build() -> keras.Model:
        return build_merge_model(len(vocab), 8, 16, 32, 0.1)

    keras.utils.set_random_seed(0)
    with dtype_policy("mixed_float16"):
        mixed = build()
    assert mixed.get_layer("logits").compute_dtype == "float16"
    result = fit_toy(mixed, ids, feats, epochs=12)
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    losses = result.history["val_loss"]
    assert all(np.isfinite(losses)) and losses[result.best_epoch - 1] < 0.6 * losses[0]
    saved = float32_copy(mixed, build)
    assert {la.compute_dtype for la in saved.layers if la.weights} == {"float32"}
    caps = beam_search(StepDecoder(saved), feats[:20], vocab, beam_width=1, max_length=10)
    assert sum(COLOURS[c] in cap.words for cap, c in zip(caps, toy["cls"][:20])) >= 18
