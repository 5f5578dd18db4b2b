"""`evaluate.engine`: where the evaluation split is captioned."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from captioner.engines import check_engine

if TYPE_CHECKING:
    from captioner.decoding import Caption


def decode_captions(
    engine: str, model_dir: str | Path, features: np.ndarray, threads: int, shards: int, batch_size: int,
    decode: dict[str, Any],
) -> list[Caption]:
    """Captions of every feature row, in order (:func:`captioner.decoding.generate_captions`
    with `decode`: beam_width, max_length, length_penalty, block_repeat_ngram). ``ray``
    decodes contiguous shards of whole batches in parallel tasks, each loading the model once."""
    check_engine(engine, "evaluate.engine")
    if engine == "ray":
        from captioner.engines.ray_decode import decode_captions as ray_decode_captions

        return ray_decode_captions(model_dir, features, threads, shards, batch_size, decode)
    from captioner.features import pin_threads

    pin_threads(threads)
    return decode_shard(model_dir, features, batch_size, decode, progress=True)


def decode_shard(
    model_dir: str | Path, features: np.ndarray, batch_size: int, decode: dict[str, Any], progress: bool = False
) -> list[Caption]:
    """Load the model folder's members and caption `features` (one shard, or all of them)."""
    from captioner.decoding import StepDecoder, generate_captions
    from captioner.io import read_json
    from captioner.model import load_members
    from captioner.text import load_vocabulary

    vocab = load_vocabulary(Path(model_dir) / "vocab.json")
    models = load_members(model_dir, read_json(Path(model_dir) / "meta.json"), features.shape[1], len(vocab))
    return generate_captions(
        StepDecoder(models), features, vocab, decode["beam_width"], decode["max_length"],
        decode["length_penalty"], batch_size, progress=progress, block_repeat_ngram=decode["block_repeat_ngram"],
    )
