"""A trained model folder, as every consumer (CLI, service, export) reads it.

The folder holds model.keras (or the ensemble members meta.json names), vocab.json, meta.json
and, in a release (`data/release/`, written by the pipeline's `package` stage), decoding.json:
the decoding settings the evaluation used. Consumers decode with those settings unless told
otherwise; a folder without decoding.json decodes with the evaluate defaults (greedy, no
length penalty, no n-gram blocking, 40 words at most).

Importing this module is cheap: TensorFlow loads only in `load_captioner`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras
    import numpy as np

    from captioner.backbones import Backbone
    from captioner.decoding import Caption, StepDecoder
    from captioner.text import Vocabulary

MODEL_FILES = ("model.keras", "vocab.json", "meta.json")
DECODING_FILE = "decoding.json"
MODEL_ENV = "CAPTIONER_MODEL"
RELEASE_DIR, TRAINED_DIR = "data/release", "data/model"


class ModelError(Exception):
    """A model folder is missing or inconsistent; the message names the file and the fix."""


def default_model_dir() -> str:
    """`$CAPTIONER_MODEL`, else data/release if it exists, else data/model."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    return RELEASE_DIR if Path(RELEASE_DIR).is_dir() else TRAINED_DIR


@dataclass(frozen=True)
class DecodingConfig:
    """How captions are decoded: beam width (1 = greedy), GNMT length penalty (0 = off),
    n-gram blocking (0 = off) and words at most. Defaults: the evaluate stage's."""

    beam_width: int = 1
    length_penalty: float = 0.0
    block_repeat_ngram: int = 0
    max_length: int = 40

    def __post_init__(self) -> None:
        for name, low in (("beam_width", 1), ("length_penalty", 0.0), ("block_repeat_ngram", 0), ("max_length", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise ValueError(f"decoding setting {name} must be a number >= {low}, got {value!r}")
        for name in ("beam_width", "block_repeat_ngram", "max_length"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"decoding setting {name} must be an integer, got {getattr(self, name)!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = DECODING_FILE) -> DecodingConfig:
        """Build from a decoding.json object; unknown keys or bad values raise ValueError naming `source`."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{source}: unknown decoding setting(s) {sorted(unknown)}; "
                             f"known: {', '.join(cls.__dataclass_fields__)}")
        try:
            return cls(**dict(data))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def overridden(self, **changes: Any) -> DecodingConfig:
        """A copy with the settings in `changes` that are not None (command-line flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_decoding(folder: str | os.PathLike[str]) -> DecodingConfig:
    """The folder's decoding.json, or the evaluate defaults when it has none.

    Raises ModelError for an unreadable or invalid decoding.json.
    """
    path = Path(folder) / DECODING_FILE
    if not path.is_file():
        return DecodingConfig()
    try:
        return DecodingConfig.from_mapping(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: cannot read the decoding settings ({e})") from None
    except ValueError as e:
        raise ModelError(str(e)) from None


def write_decoding(folder: str | os.PathLike[str], config: DecodingConfig) -> Path:
    """Write `config` as the folder's decoding.json (atomically); returns its path."""
    from captioner.io import write_json

    path = Path(folder) / DECODING_FILE
    write_json(path, config.as_dict())
    return path


def check_model_files(folder: str | os.PathLike[str]) -> None:
    """Raise ModelError unless `folder` has model.keras, vocab.json and meta.json (no TensorFlow)."""
    folder = Path(folder)
    missing = [str(folder / n) for n in MODEL_FILES if not (folder / n).is_file()]
    if missing:
        raise ModelError(
            f"no trained model at {folder} (missing {', '.join(missing)}); "
            "run `make repro` (or `dvc repro`, or `dvc pull` for a shared one) first, "
            f"or pass --model DIR (or set {MODEL_ENV})"
        )


@dataclass(frozen=True)
class Captioner:
    """A trained model folder, loaded and checked: model(s), vocabulary, CNN backbone and the
    folder's decoding settings."""

    models: list[keras.Model]  # one, or the members of an ensemble
    vocab: Vocabulary
    backbone: Backbone
    decoding: DecodingConfig = DecodingConfig()
    folder: str = ""
    dataset: str | None = None  # "scenes" (a toy) or "flickr8k", from a release's meta.json

    @functools.cached_property
    def decoder(self) -> StepDecoder:
        """The compiled one-word-at-a-time decoder (built once)."""
        from captioner.decoding import StepDecoder

        return StepDecoder(self.models)

    @property
    def attends(self) -> bool:
        """Whether some member attends over regions (attention maps are available)."""
        return bool(self.decoder.regions)

    def caption_features(
        self, features: np.ndarray, config: DecodingConfig | None = None, batch_size: int = 32,
        progress: bool = False, attention: bool = False,
    ) -> list[Caption]:
        """Captions of CNN features (N, feature_dim), decoded with `config` (default: the folder's)."""
        import numpy as np

        from captioner.decoding import generate_captions

        c = config or self.decoding
        return generate_captions(
            self.decoder, np.asarray(features, np.float32), self.vocab, c.beam_width, c.max_length,
            c.length_penalty, batch_size, progress, block_repeat_ngram=c.block_repeat_ngram, attention=attention,
        )

    def features_of(self, pixels: np.ndarray) -> np.ndarray:
        """CNN features of a uint8 RGB batch (N, input_size, input_size, 3)."""
        return self.backbone.forward(self.backbone.preprocess(pixels))


def load_captioner(model_dir: str | os.PathLike[str]) -> Captioner:
    """Load model(s), vocab.json, meta.json, decoding.json and the backbone meta.json names.

    Raises ModelError for a missing folder or file, unreadable JSON, a vocabulary that does not
    match the model, or a backbone whose features do not match what the model expects.
    """
    folder = Path(model_dir)
    check_model_files(folder)
    decoding = read_decoding(folder)
    from captioner.backbones import load_backbone  # TensorFlow loads only once a model is there
    from captioner.io import read_json
    from captioner.model import load_members
    from captioner.text import load_vocabulary

    try:
        meta: dict[str, Any] = read_json(folder / "meta.json")
        vocab = load_vocabulary(folder / "vocab.json")
        backbone_name, feature_dim = str(meta["backbone"]), int(meta["feature_dim"])
        models = load_members(folder, meta, feature_dim, len(vocab))
    except (KeyError, TypeError) as e:
        raise ModelError(f"{folder / 'meta.json'}: missing or bad entry {e}") from None
    except ValueError as e:
        raise ModelError(str(e)) from None
    try:
        spatial = str(meta.get("spatial") or "pooled")  # grid: an attention model
        backbone = load_backbone(backbone_name, str(meta.get("weights") or "imagenet"), spatial)
    except (ValueError, FileNotFoundError) as e:
        raise ModelError(f"{folder / 'meta.json'}: {e}") from None
    if backbone.feature_dim != feature_dim:
        raise ModelError(
            f"{folder / 'meta.json'}: the model expects {feature_dim}-d features but backbone "
            f"{backbone_name} gives {backbone.feature_dim}-d"
        )
    return Captioner(models, vocab, backbone, decoding, str(folder), meta.get("dataset"))
