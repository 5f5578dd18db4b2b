"""`evaluate.engine`: where the evaluation split is captioned."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from captioner.engines import check_engine

if TYPE_CHECKING:
    from captioner.config.decoding import DecodingConfig
    from captioner.decoding.search import Caption

__all__ = ["decode_captions"]


def decode_captions(
    engine: str, model_dir: str | Path, features: np.ndarray, threads: int, shards: int, batch_size: int,
    config: DecodingConfig,
) -> list[Caption]:
    """Captions of every feature row, in order (:func:`captioner.decoding.search.decode_folder`
    with `config`). ``ray`` decodes contiguous shards of whole batches in parallel tasks, each
    loading the model once."""
    check_engine(engine, "evaluate.engine")
    if engine == "ray":
        from captioner.engines.ray_decode import decode_captions as ray_decode_captions

        return ray_decode_captions(model_dir, features, threads, shards, batch_size, config)
    from captioner.runtime.threads import pin_threads

    pin_threads(threads)
    from captioner.decoding.search import decode_folder

    return decode_folder(model_dir, features, config, batch_size, progress=True)
