"""Model builders: the seed's "merge" captioner, from plain arguments.

image feature -> dropout -> dense(units, relu) ──┐
caption ids -> embedding(mask) -> dropout -> LSTM ┴─ add -> dense(units, relu) -> logits

The model outputs logits over the vocabulary for every position of the input caption
(teacher forcing over whole captions); softmax is applied in the loss and at decoding.
Layers carry fixed names so that `captioner.decoding` can run them one word at a time.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers, ops

IMAGE_INPUT, CAPTION_INPUT = "image", "caption"


def build_merge_model(
    vocab_size: int, feature_dim: int, embedding_dim: int, units: int, dropout: float
) -> keras.Model:
    """The merge model over whole (variable-length) captions; outputs (B, T, vocab) logits."""
    image = keras.Input((feature_dim,), name=IMAGE_INPUT)
    caption = keras.Input((None,), dtype="int32", name=CAPTION_INPUT)

    img = layers.Dropout(dropout, name="image_dropout")(image)
    img = layers.Dense(units, activation="relu", name="image_dense")(img)

    txt = layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name="embedding")(caption)
    txt = layers.Dropout(dropout, name="text_dropout")(txt)
    txt = layers.LSTM(units, return_sequences=True, name="lstm")(txt)

    # Broadcast the image over time. (Keras 3's layers.add would drop the mask anyway:
    # padding is kept out of the loss by ignore_class=0, see captioner.training.)
    merged = ops.expand_dims(img, 1) + txt
    hidden = layers.Dense(units, activation="relu", name="decoder_dense")(merged)
    logits = layers.Dense(vocab_size, name="logits")(hidden)
    return keras.Model([image, caption], logits, name="merge_captioner")


def model_signature(model: keras.Model) -> tuple[int, int]:
    """(feature_dim, vocab_size) a trained model expects."""
    feature_dim = int(model.get_layer("image_dense").kernel.shape[0])
    vocab_size = int(model.get_layer("logits").kernel.shape[1])
    return feature_dim, vocab_size


def load_model(path: str, feature_dim: int | None = None, vocab_size: int | None = None) -> keras.Model:
    """Load a saved captioner, checking it matches the features and vocabulary it will get."""
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot load the model ({e})") from None
    got_dim, got_vocab = model_signature(model)
    if feature_dim is not None and got_dim != feature_dim:
        raise ValueError(
            f"{path}: the model expects {got_dim}-d image features but the features have "
            f"{feature_dim} (was it trained with another backbone?)"
        )
    if vocab_size is not None and got_vocab != vocab_size:
        raise ValueError(
            f"{path}: the model predicts {got_vocab} words but the vocabulary has {vocab_size} "
            "(was it trained with another vocabulary?)"
        )
    return model


def member_files(meta: dict) -> list[str]:
    """File names of a model folder's ensemble members (meta.json "members"; one model by default)."""
    members = meta.get("members", ["model.keras"])
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ValueError(f"meta.json: 'members' must be a non-empty list of file names, got {members!r}")
    return members


def load_members(
    folder: str | Path, meta: dict, feature_dim: int | None = None, vocab_size: int | None = None
) -> list[keras.Model]:
    """Load every member model of a trained model folder, each checked like `load_model`."""
    return [load_model(str(Path(folder) / name), feature_dim, vocab_size) for name in member_files(meta)]
