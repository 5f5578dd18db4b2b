"""VGG16 (Keras applications) cut at ``fc2``: a 4096-d feature per 224x224 image."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

__all__ = [
    "BGR_MEAN", "FEATURE_LAYER", "GRID_LAYER", "INPUT_SIZE", "WEIGHTS_FILE", "WEIGHTS_URL",
    "WeightsUnavailableError", "load_vgg16", "preprocess", "preprocess_graph",
]

INPUT_SIZE = 224
FEATURE_LAYER = "fc2"
GRID_LAYER = "block5_conv3"  # 14x14x512 regions, for the attention decoder
WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/vgg16/{WEIGHTS_FILE}"


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights are not on disk and could not be downloaded; the message says what to do."""


def preprocess(batch: np.ndarray) -> np.ndarray:
    """Map a uint8 (N, H, W, 3) RGB batch to VGG16 input (caffe: BGR, ImageNet mean subtracted)."""
    return np.ascontiguousarray(keras.applications.vgg16.preprocess_input(np.array(batch, dtype=np.float32)))


BGR_MEAN = (103.939, 116.779, 123.68)  # the ImageNet mean of Keras' "caffe" preprocessing, B, G, R


def preprocess_graph(batch):
    """:func:`preprocess` in TensorFlow ops (the SavedModel export): RGB -> BGR, mean subtracted."""
    import tensorflow as tf

    return tf.reverse(tf.cast(batch, tf.float32), axis=[-1]) - tf.constant(BGR_MEAN)


def _full_vgg16(weights: str | os.PathLike[str]) -> keras.Model:
    """The full classifier VGG16 with `weights` ("imagenet", "none" or a local .h5 path)."""
    if str(weights) == "none":
        return keras.applications.VGG16(include_top=True, weights=None)
    if str(weights) != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: VGG16 weights file not found (features.weights)")
        try:
            return keras.applications.VGG16(include_top=True, weights=str(path))
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: not usable as VGG16 (include_top) weights: {e}") from e
    try:
        return keras.applications.VGG16(include_top=True, weights="imagenet")
    except Exception as e:  # Keras raises a bare Exception on download failure
        raise WeightsUnavailableError(
            f"could not download VGG16 ImageNet weights ({e}). On a machine with internet, download "
            f"{WEIGHTS_FILE} ({WEIGHTS_URL}), "
            "copy it here and set features.weights to its local path"
        ) from e


def load_vgg16(weights: str | os.PathLike[str] = "imagenet", layer: str = FEATURE_LAYER) -> keras.Model:
    """VGG16 from float32 (N, 224, 224, 3) preprocessed input to the output of `layer` (fc2: 4096-d)."""
    full = _full_vgg16(weights)
    return keras.Model(full.input, full.get_layer(layer).output, name=f"vgg16_{layer}")
