"""evaluate.engine=ray: contiguous shards of whole decoding batches captioned by parallel Ray
tasks (:func:`captioner.decoding.search.decode_folder`); the driver scores them all at once."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray

from captioner.engines.ray_engine import connect, enter, resources

if TYPE_CHECKING:
    from captioner.config.decoding import DecodingConfig
    from captioner.decoding.search import Caption

__all__ = ["decode_captions", "shard_bounds"]


def _decode(cwd: str, model_dir: str, features: np.ndarray, batch_size: int, config: DecodingConfig, threads: int):
    enter(cwd, threads)
    from captioner.decoding.search import decode_folder

    return decode_folder(model_dir, features, config, batch_size)


def shard_bounds(n: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Row ranges of `shards` (at most one per batch) contiguous shards of whole batches, so
    every decoding batch holds the same images as in one process."""
    batches = math.ceil(n / batch_size)
    shards = max(1, min(shards, batches))
    cuts = [round(k * batches / shards) * batch_size for k in range(shards + 1)]
    return [(a, min(b, n)) for a, b in zip(cuts, cuts[1:]) if a < n]


def decode_captions(
    model_dir: str | Path, features: np.ndarray, threads: int, shards: int, batch_size: int, config: DecodingConfig
) -> list[Caption]:
    """Captions of every row of `features`, in order, decoded by parallel Ray tasks."""
    connect()
    res, fits = resources(threads)
    task = ray.remote(_decode).options(**res)
    cwd = os.getcwd()
    refs = [task.remote(cwd, str(model_dir), features[a:b], batch_size, config, threads)
            for a, b in shard_bounds(len(features), batch_size, shards or fits)]
    return [c for part in ray.get(refs) for c in part]
