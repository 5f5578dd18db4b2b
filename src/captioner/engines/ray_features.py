"""features.engine=ray: Ray Data streams the batches (lists of image paths) through an actor
pool; each actor loads the backbone once and runs :func:`captioner.features.extract.run_batches`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray

from captioner.engines.ray_engine import connect, enter, resources

if TYPE_CHECKING:
    from captioner.features.extract import BatchResult

__all__ = ["FeatureRunner"]


class _CNN:
    """A Ray Data actor: the backbone, loaded once; one batch of image paths per call."""

    def __init__(self, cwd: str, backbone: str, weights: str, spatial: str, threads: int, workers: int,
                 on_error: str) -> None:
        enter(cwd, threads)
        from captioner.features.backbones import load_backbone

        self.backbone = load_backbone(backbone, weights, spatial)
        self.workers, self.on_error = workers, on_error

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from captioner.features.extract import run_batches

        metas, blobs = [], []
        for span in batch["paths"]:
            [r] = run_batches([[Path(p) for p in span]], self.backbone, self.workers, on_error=self.on_error)
            metas.append(json.dumps({"paths": r.paths, "stamps": r.stamps, "problems": r.problems,
                                     "notes": r.notes, "shape": list(r.features.shape)}))
            blobs.append(np.ascontiguousarray(r.features, np.float32).tobytes())
        return {"index": np.asarray(batch["index"]), "meta": np.array(metas, dtype=object),
                "features": np.array(blobs, dtype=object)}


def _result(row: dict) -> BatchResult:
    """A batch's BatchResult from its row (JSON and raw float32 bytes: nothing is unpickled)."""
    from captioner.features.extract import BatchResult

    meta = json.loads(row["meta"])
    features = np.frombuffer(row["features"], np.float32).reshape(meta["shape"]).copy()
    return BatchResult(meta["paths"], [tuple(s) for s in meta["stamps"]], features, meta["problems"],
                       [tuple(n) for n in meta["notes"]])


class FeatureRunner:
    """`runner` for :func:`captioner.features.extract.extract`: BatchResults of the spans, in order."""

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
            yield _result(row)
        if expected != len(spans):
            raise RuntimeError(f"features.engine=ray: {expected} of {len(spans)} batches came back")
