"""Where a stage's heavy work runs: ``local`` (this process, the default) or ``ray``.

The core modules (features, training, decoding, ...) never import Ray; a stage asks for its
engine by its params: `features.engine` (:mod:`.extraction`), `train.engine` (:mod:`.ensemble`),
`evaluate.engine` (:mod:`.captioning`). Each dispatches to its Ray module (:mod:`.ray_features`,
:mod:`.ray_train`, :mod:`.ray_decode`, sharing :mod:`.ray_engine`) only when ``ray`` is chosen.
One module per stage, so a change to the training engine never reruns the CNN extraction
(dvc.yaml lists each stage's modules as deps).
Both engines run the same project functions on the same batches with the same pinned thread
counts, so they give the same bytes (features), weights (ensemble members) and captions
(evaluation); docs/SCALE.md says how to run on a cluster.
"""

from __future__ import annotations

ENGINES = ("local", "ray")


def check_engine(engine: str, param: str) -> None:
    """Raise ValueError naming `param` when `engine` is not one of ENGINES."""
    if engine not in ENGINES:
        raise ValueError(f"{param}: unknown engine {engine!r}; use one of {ENGINES}")
