"""`features.engine`: where :func:`captioner.features.extract.extract` computes its batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.engines import check_engine

if TYPE_CHECKING:
    from captioner.features.extract import BatchResult

__all__ = ["feature_runner"]


def feature_runner(
    engine: str, backbone: str, weights: str, spatial: str, threads: int, workers: int, actors: int,
    on_error: str = "skip",
) -> Callable[[list[list[Path]]], Iterable[BatchResult]] | None:
    """The `runner` for :func:`captioner.features.extract.extract`: None (this process) for ``local``,
    a Ray Data actor pool (each actor loads the backbone once) for ``ray``."""
    check_engine(engine, "features.engine")
    if engine == "local":
        return None
    from captioner.engines.ray_features import FeatureRunner

    return FeatureRunner(backbone, weights, spatial, threads, workers, actors, on_error)
