"""features.engine=ray: Ray Data streams the batches (lists of image paths) through an actor
pool; each actor loads the backbone once and runs :func:`captioner.features.run_batches`."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray

from captioner.engines.ray_engine import connect, enter, resources

if TYPE_CHECKING:
    from captioner.features import BatchResult


class _CNN:
    """A Ray Data actor: the backbone, loaded once; one batch of image paths per call."""

    def __init__(self, cwd: str, backbone: str, weights: str, spatial: str, threads: int, workers: int,
                 on_error: str) -> None:
        enter(cwd, threads)
        from captioner.backbones import load_backbone

        self.backbone = load_backbone(backbone, weights, spatial)
        self.workers, self.on_error = workers, on_error

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from captioner.features import run_batches

        payloads = []
        for span in batch["paths"]:
            [result] = run_batches([[Path(p) for p in span]], self.backbone, self.workers, on_error=self.on_error)
            payloads.append(pickle.dumps(result, protocol=5))
        return {"index": np.asarray(batch["index"]), "payload": np.array(payloads, dtype=object)}


class FeatureRunner:
    """`runner` for :func:`captioner.features.extract`: BatchResults of the spans, in order."""

    def __init__(self, backbone: str, weights: str, spatial: str, threads: int, workers: int, actors: int,
                 on_error: str = "skip") -> None:
        self.args = (backbone, weights, spatial, threads, workers, on_error)
        self.threads, self.actors = threads, actors

    def __call__(self, spans: list[list[Path]]) -> Iterator[BatchResult]:
        if not spans:
            return
        connect()
        res, fits = resources(self.threads)
        actors = min(self.actors or fits, len(spans))
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # batches come back in input order
        ctx.enable_progress_bars = False  # the driver's own bar counts images
        items = [{"index": i, "paths": [str(p) for p in span]} for i, span in enumerate(spans)]
        ds = ray.data.from_items(items).map_batches(
            _CNN, batch_size=1, concurrency=actors, fn_constructor_args=(os.getcwd(), *self.args), **res,
        )
        expected = 0
        for row in ds.iter_rows():
            if int(row["index"]) != expected:  # preserve_order is the contract; never write out of order
                raise RuntimeError(f"features.engine=ray: batch {row['index']} arrived, expected {expected}")
            expected += 1
            yield pickle.loads(row["payload"])
        if expected != len(spans):
            raise RuntimeError(f"features.engine=ray: {expected} of {len(spans)} batches came back")
