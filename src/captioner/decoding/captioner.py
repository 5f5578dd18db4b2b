"""A trained model folder ready to caption images: its models behind one StepDecoder, its
vocabulary, its CNN backbone and its decoding settings (what the CLI, the service and the
export load).

Importing this module loads TensorFlow; `load_captioner` checks the folder's files first.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import keras
import numpy as np

from captioner.config.decoding import DecodingConfig
from captioner.datasets.text import Vocabulary
from captioner.decoding.cider import CiderD
from captioner.decoding.search import Caption, generate_captions, load_ngrams
from captioner.features.backbones import Backbone, load_backbone
from captioner.model.folder import META_FILE, NGRAMS_FILE, ModelError, ModelFolder
from captioner.model.step import StepDecoder

__all__ = ["Captioner", "load_captioner"]


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
    ngrams: CiderD | None = None  # the train captions' n-gram document frequencies, for consensus reranking

    @functools.cached_property
    def decoder(self) -> StepDecoder:
        """The compiled one-word-at-a-time decoder (built once)."""
        return StepDecoder(self.models)

    @property
    def attends(self) -> bool:
        """Whether some member attends over regions (attention maps are available)."""
        return bool(self.decoder.regions)

    def check(self, config: DecodingConfig) -> None:
        """ModelError naming the missing file if `config` needs what the folder lacks (consensus
        reranking reads its n-gram document frequencies)."""
        if config.rerank == "consensus" and self.ngrams is None:
            load_ngrams(ModelFolder.open(self.folder))  # the ModelError naming the missing file

    def caption_features(
        self, features: np.ndarray, config: DecodingConfig | None = None, batch_size: int = 32,
        progress: bool = False, attention: bool = False,
    ) -> list[Caption]:
        """Captions of CNN features (N, feature_dim), decoded with `config` (default: the folder's)."""
        self.check(config or self.decoding)
        return generate_captions(self.decoder, np.asarray(features, np.float32), self.vocab, config or self.decoding,
                                 batch_size, progress, attention=attention, ngrams=self.ngrams)

    def features_of(self, pixels: np.ndarray) -> np.ndarray:
        """CNN features of a uint8 RGB batch (N, input_size, input_size, 3)."""
        return self.backbone.forward(self.backbone.preprocess(pixels))


def load_captioner(model_dir: str | os.PathLike[str]) -> Captioner:
    """Load model(s), vocabulary, decoding settings and the backbone the folder's meta.json names.

    Raises ModelError for a missing folder or file, unreadable JSON, a vocabulary that does not
    match the model, a backbone whose features do not match what the model expects, or a
    decoding.json asking for consensus reranking in a folder without n-gram frequencies.
    """
    folder = ModelFolder.open(model_dir)
    decoding = folder.decoding()
    # loaded whenever the folder has them (a call may ask for consensus); required when its decoding.json asks
    has_ngrams = (folder.path / NGRAMS_FILE).is_file() or decoding.rerank == "consensus"
    ngrams = load_ngrams(folder) if has_ngrams else None
    meta_file = folder.path / META_FILE
    try:
        vocab = folder.vocabulary()
        feature_dim = folder.feature_dim
        models = folder.load_models(feature_dim, len(vocab))
    except (KeyError, TypeError) as e:
        raise ModelError(f"{meta_file}: missing or bad entry {e}") from None
    except ValueError as e:
        raise ModelError(str(e)) from None
    try:
        backbone = load_backbone(folder.backbone, folder.weights, folder.spatial)
    except (ValueError, FileNotFoundError) as e:
        raise ModelError(f"{meta_file}: {e}") from None
    if backbone.feature_dim != feature_dim:
        raise ModelError(
            f"{meta_file}: the model expects {feature_dim}-d features but backbone "
            f"{folder.backbone} gives {backbone.feature_dim}-d"
        )
    return Captioner(models, vocab, backbone, decoding, str(folder.path), folder.dataset, ngrams)


