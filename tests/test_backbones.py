"""Tests for captioner.backbones: legacy torch reader, EfficientNet-Lite0 port, VGG16, registry.

The Lite0 reference (tests/fixtures/lite0_*) comes from a float64 torch forward of the same
checkpoint in a throwaway torch venv; tests/fixtures/lite0_README.md has the exact scripts.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from captioner.backbones.torch_legacy import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    CheckpointError,
    UnsafeCheckpointError,
    read_state_dict,
)
from captioner.images import load_image

FIXTURES = Path(__file__).parent / "fixtures"
LITE0_BLOCKS = 16
LOGIT_ATOL = 1e-4  # measured max |keras - torch(float64)| ~ 6e-6


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    from captioner.backbones.efficientnet_lite0 import checkpoint_path

    return read_state_dict(checkpoint_path())


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    ref = dict(np.load(FIXTURES / "lite0_reference.npz"))
    ref["images"] = np.stack([load_image(FIXTURES / f"lite0_{n}.webp", 224) for n in ref["names"]])
    return ref


# ---------------------------------------------------------------- legacy torch reader


def test_legacy_reader_lite0_keys_and_shapes(lite0_state: dict[str, np.ndarray]) -> None:
    assert len(lite0_state) == 296
    assert lite0_state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in lite0_state
    assert lite0_state["_blocks.1._expand_conv.weight"].shape == (96, 16, 1, 1)
    assert lite0_state[f"_blocks.{LITE0_BLOCKS - 1}._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert f"_blocks.{LITE0_BLOCKS}._bn0.weight" not in lite0_state
    assert lite0_state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert lite0_state["_fc.weight"].shape == (1000, 1280) and lite0_state["_fc.bias"].shape == (1000,)
    assert lite0_state["_bn1.num_batches_tracked"].dtype == np.int64
    floats = [v for k, v in lite0_state.items() if not k.endswith("num_batches_tracked")]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in floats)


def test_legacy_reader_dtypes_views_and_strides() -> None:
    got = read_state_dict(FIXTURES / "lite0_legacy_small.pth")
    expected = np.load(FIXTURES / "lite0_legacy_small_expected.npz")
    assert list(got) == list(expected.files)
    for key in expected.files:
        assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
        assert got[key].flags.c_contiguous


class _Payload:
    """Pickles as a call to `func(*args)`: what a malicious checkpoint would contain."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _legacy_file(path: Path, main: object, magic: object = LEGACY_MAGIC) -> Path:
    with path.open("wb") as f:
        for obj in (magic, LEGACY_PROTOCOL, {"little_endian": True}, main, []):
            pickle.dump(obj, f, protocol=2)
    return path


@pytest.mark.parametrize(
    ("where", "func"),
    [("main", os.system), ("main", eval), ("nested", os.system), ("magic", os.system)],
)
def test_malicious_checkpoint_refused_and_nothing_runs(tmp_path: Path, where: str, func) -> None:
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    payload = _Payload(func, arg)
    main = OrderedDict(w=payload) if where == "nested" else payload
    ckpt = _legacy_file(
        tmp_path / "evil.pth", main if where != "magic" else {}, payload if where == "magic" else LEGACY_MAGIC
    )
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"evil\.pth: refusing global (posix|os|nt|builtins|__builtin__)\.(system|eval)",
    ):
        read_state_dict(ckpt)
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, pickle.UnpicklingError)


def test_not_a_legacy_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"zip\.pth"):
        read_state_dict(tmp_path / "zip.pth")
    with pytest.raises(CheckpointError, match=r"wrong\.pth: not a legacy torch checkpoint"):
        read_state_dict(_legacy_file(tmp_path / "wrong.pth", {}, magic=12345))
    with pytest.raises(CheckpointError, match=r"absent\.pth: cannot read"):
        read_state_dict(tmp_path / "absent.pth")


def test_truncated_checkpoint(tmp_path: Path) -> None:
    data = (FIXTURES / "lite0_legacy_small.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"cut\.pth: truncated"):
        read_state_dict(tmp_path / "cut.pth")


# ---------------------------------------------------------------- EfficientNet-Lite0


def test_lite0_port_matches_torch_reference(reference: dict[str, np.ndarray]) -> None:
    from captioner.backbones.efficientnet_lite0 import load_efficientnet_lite0, preprocess

    model = load_efficientnet_lite0("imagenet", include_top=True)
    logits = np.asarray(model(preprocess(reference["images"]), training=False))
    np.testing.assert_allclose(logits, reference["logits"], rtol=0, atol=LOGIT_ATOL)
    chelsea, coffee = logits.argmax(axis=1)
    assert 281 <= chelsea <= 285  # a cat (285 = Egyptian cat)
    assert coffee == 967  # espresso


def test_lite0_backbone_features_match_reference(reference: dict[str, np.ndarray]) -> None:
    from captioner.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0")
    assert (backbone.name, backbone.input_size, backbone.feature_dim) == ("efficientnet_lite0", 224, 1280)
    feats = np.asarray(backbone.model(backbone.preprocess(reference["images"]), training=False))
    assert feats.shape == (2, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, reference["features"], rtol=0, atol=LOGIT_ATOL)


def test_lite0_grid_averages_to_the_pooled_features(reference: dict[str, np.ndarray]) -> None:
    """The 7x7 region grid (attention) is the map that the pooled vector averages."""
    from captioner.backbones import load_backbone

    grid = load_backbone("efficientnet_lite0", spatial="grid")
    assert grid.grid == (49, 1280) and grid.feature_dim == 49 * 1280
    regions = np.asarray(grid.model(grid.preprocess(reference["images"]), training=False)).reshape(2, 49, 1280)
    np.testing.assert_allclose(regions.mean(axis=1), reference["features"], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="unknown spatial mode 'cells'"):
        load_backbone("efficientnet_lite0", spatial="cells")


def test_lite0_port_is_strict(lite0_state: dict[str, np.ndarray]) -> None:
    from captioner.backbones.efficientnet_lite0 import build_model, port_weights

    model = build_model()
    missing = {k: v for k, v in lite0_state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ValueError, match=r"ckpt: no tensor _blocks\.3\._bn1\.running_var"):
        port_weights(model, missing, source="ckpt")
    extra = {**lite0_state, "_blocks.16._bn0.weight": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"have no layer"):
        port_weights(model, extra, source="ckpt")


def test_lite0_missing_weights_file(tmp_path: Path) -> None:
    from captioner.backbones.efficientnet_lite0 import load_efficientnet_lite0

    with pytest.raises(FileNotFoundError, match=r"nothere\.pth"):
        load_efficientnet_lite0(tmp_path / "nothere.pth")


# ---------------------------------------------------------------- VGG16 and registry


def test_vgg16_random_weights_fc2() -> None:
    from captioner.backbones import load_backbone

    backbone = load_backbone("vgg16", weights="none")
    assert (backbone.input_size, backbone.feature_dim) == (224, 4096)
    x = backbone.preprocess(np.full((1, 224, 224, 3), 128, np.uint8))
    assert x.dtype == np.float32 and np.allclose(x[0, 0, 0], [128 - 103.939, 128 - 116.779, 128 - 123.68])
    out = np.asarray(backbone.model(x, training=False))
    assert out.shape == (1, 4096) and np.isfinite(out).all()
    grid = load_backbone("vgg16", weights="none", spatial="grid")
    assert grid.grid == (196, 512) and grid.model.output.shape[-1] == 196 * 512  # block5_conv3, 14x14


def test_vgg16_missing_h5_path(tmp_path: Path) -> None:
    from captioner.backbones import load_backbone

    with pytest.raises(
        FileNotFoundError, match=r"vgg\.h5: VGG16 weights file not found \(features\.weights\)"
    ):
        load_backbone("vgg16", weights=str(tmp_path / "vgg.h5"))


def test_vgg16_offline_download_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    from captioner.backbones import vgg16

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(vgg16.WeightsUnavailableError) as info:
        vgg16.load_vgg16("imagenet")
    assert isinstance(info.value, FileNotFoundError)  # callers handle it like a missing weights file
    msg = str(info.value)
    assert (
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in msg
        and "features.weights" in msg
        and "URL fetch" in msg
    )


def test_unknown_backbone_lists_known_names() -> None:
    from captioner.backbones import BACKBONES, load_backbone

    assert BACKBONES == ("efficientnet_lite0", "vgg16")
    with pytest.raises(ValueError, match=r"resnet50.*efficientnet_lite0, vgg16"):
        load_backbone("resnet50")
