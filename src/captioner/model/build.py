"""Model builders: the "merge" captioner of the classic Keras image-captioning tutorial and a soft-attention captioner.

merge (model.kind=merge), over one pooled feature vector per image:

    image feature -> dropout -> dense(units, relu) ──┐
    caption ids -> embedding(mask) -> dropout -> LSTM ┴─ add -> dense(units, relu) -> logits

attention (model.kind=attention), over a grid of region features (e.g. 7x7x1280): the merge
model plus, at every word, a context vector attended over the regions:

    regions -> mean -> dropout -> dense(units, relu) = image        (the merge model's branch)
    regions -> dropout -> dense(units, relu) = V ──── mean -> dense(tanh) -> LSTM h0, c0
    caption ids -> embedding(mask) -> dropout -> LSTM(h0, c0) = h_t
    alpha_t = softmax_r(w . tanh(K v_r + Q h_t)),  context_t = sum_r alpha_t,r v_r
    h_t + context_t + image -> dense(units, relu) -> logits

The attention looks at the regions from the LSTM's output at every word (the "spatial
attention" of Lu et al. 2017) rather than feeding the context back into the LSTM input
(Xu et al. 2015): the LSTM then runs as one fused layer over the whole caption and training
stays parallel over words, which is what makes it trainable on a 2-core CPU. A
doubly-stochastic penalty (Xu et al.) pushes each region to receive about one unit of
attention over the caption.

Both output logits over the vocabulary for every position of the input caption (teacher
forcing over whole captions); softmax is applied in the loss and at decoding. Layers carry
fixed names so that `captioner.decoding.search` can run them one word at a time.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from captioner.config.params import ModelParams
from captioner.datasets.text import END_ID

IMAGE_INPUT, CAPTION_INPUT = "image", "caption"
# Layer names, fixed so that captioner.model.step can run a trained model one word at a time.
REGIONS, POOLED, IMAGE_DROPOUT, IMAGE_DENSE = "regions", "pooled", "image_dropout", "image_dense"
REGION_DROPOUT, REGION_DENSE, INIT_H, INIT_C = "region_dropout", "region_dense", "init_h", "init_c"
EMBEDDING, TEXT_DROPOUT, LSTM, ATTENTION = "embedding", "text_dropout", "lstm", "attention"
DECODER_DENSE, LOGITS = "decoder_dense", "logits"

__all__ = [
    "ATTENTION", "CAPTION_INPUT", "DECODER_DENSE", "EMBEDDING", "IMAGE_DENSE", "IMAGE_INPUT", "INIT_C", "INIT_H",
    "LOGITS", "LSTM", "POOLED", "REGIONS", "REGION_DENSE", "RegionAttention", "build_attention_model",
    "build_member", "build_merge_model", "load_model", "model_kind", "model_signature",
]


def build_merge_model(
    vocab_size: int, feature_dim: int, embedding_dim: int, units: int, dropout: float, regions: int = 0
) -> keras.Model:
    """The merge model over whole (variable-length) captions; outputs (B, T, vocab) logits.

    With `regions` > 0 it reads a flattened (regions x feature_dim) grid and averages it over
    the regions first, which gives back the pooled feature (a merge member of an attention
    ensemble, trained and decoded on the same grid file)."""
    image = keras.Input((feature_dim * max(regions, 1),), name=IMAGE_INPUT)
    caption = keras.Input((None,), dtype="int32", name=CAPTION_INPUT)

    pooled = image
    if regions:
        grid = layers.Reshape((regions, feature_dim), name=REGIONS)(image)
        pooled = layers.GlobalAveragePooling1D(name=POOLED)(grid)
    img = layers.Dropout(dropout, name=IMAGE_DROPOUT)(pooled)
    img = layers.Dense(units, activation="relu", name=IMAGE_DENSE)(img)

    txt = layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name=EMBEDDING)(caption)
    txt = layers.Dropout(dropout, name=TEXT_DROPOUT)(txt)
    txt = layers.LSTM(units, return_sequences=True, name=LSTM)(txt)

    # Broadcast the image over time. (Keras 3's layers.add would drop the mask anyway:
    # padding is kept out of the loss by ignore_class=0, see captioner.training.fit.)
    merged = ops.expand_dims(img, 1) + txt
    hidden = layers.Dense(units, activation="relu", name=DECODER_DENSE)(merged)
    logits = layers.Dense(vocab_size, name=LOGITS)(hidden)
    return keras.Model([image, caption], logits, name="merge_captioner")


@keras.saving.register_keras_serializable(package="captioner")
class RegionAttention(layers.Layer):
    """Soft additive attention of each caption position over the image regions.

    call(values (B, R, D), queries (B, T, U), caption ids (B, T)) -> (context (B, T, D),
    weights (B, T, R)). With `penalty` > 0 it adds penalty * mean_r (1 - sum_t alpha_t,r)^2
    to the model's loss (doubly-stochastic attention), summing over the positions that predict
    a word: neither padding nor endseq (after which nothing is predicted).
    """

    def __init__(self, attention_dim: int, penalty: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attention_dim, self.penalty = attention_dim, penalty
        self.keys = layers.Dense(attention_dim, use_bias=False, name="keys")
        self.query = layers.Dense(attention_dim, name="query")
        self.score = layers.Dense(1, use_bias=False, name="score")

    def build(self, values_shape, queries_shape, ids_shape) -> None:
        self.keys.build(values_shape)
        self.query.build(queries_shape)
        self.score.build((None, None, None, self.attention_dim))

    def weights_for(self, keys, queries):
        """Attention weights (B, T, R) of queries (B, T, U) over keys (B, R, A); or (N, R) of
        (N, U) over (N, R, A) for one step."""
        q = self.query(queries)  # (B, T, A) or (N, A)
        e = self.score(ops.tanh(ops.expand_dims(keys, -3) + ops.expand_dims(q, -2)))
        return ops.softmax(ops.squeeze(e, -1), axis=-1)

    def call(self, values, queries, ids):
        alpha = self.weights_for(self.keys(values), queries)  # (B, T, R)
        context = ops.einsum("btr,brd->btd", alpha, values)
        if self.penalty > 0:
            real = ops.logical_and(ops.not_equal(ids, 0), ops.not_equal(ids, END_ID))
            mask = ops.cast(real, alpha.dtype)[:, :, None]
            coverage = ops.sum(alpha * mask, axis=1)  # (B, R): attention each region received
            coverage = ops.cast(coverage, "float32")  # bfloat16 under train.precision mixed_bfloat16
            self.add_loss(self.penalty * ops.mean(ops.square(1.0 - coverage)))
        return context, alpha

    def get_config(self) -> dict:
        return {**super().get_config(), "attention_dim": self.attention_dim, "penalty": self.penalty}


def build_attention_model(
    vocab_size: int,
    regions: int,
    channels: int,
    embedding_dim: int,
    units: int,
    attention_dim: int,
    dropout: float,
    attention_reg: float,
    region_dropout: float | None = None,
) -> keras.Model:
    """The soft-attention model over (B, regions * channels) flattened grids; outputs (B, T, vocab) logits.

    `region_dropout` (default: `dropout`) applies to the region features before projection."""
    image = keras.Input((regions * channels,), name=IMAGE_INPUT)
    caption = keras.Input((None,), dtype="int32", name=CAPTION_INPUT)

    grid = layers.Reshape((regions, channels), name=REGIONS)(image)
    pooled = layers.GlobalAveragePooling1D(name=POOLED)(grid)  # = the merge model's pooled feature
    img = layers.Dropout(dropout, name=IMAGE_DROPOUT)(pooled)
    img = layers.Dense(units, activation="relu", name=IMAGE_DENSE)(img)
    grid = layers.Dropout(dropout if region_dropout is None else region_dropout, name=REGION_DROPOUT)(grid)
    values = layers.Dense(units, activation="relu", name=REGION_DENSE)(grid)  # (B, R, units)
    mean = ops.mean(values, axis=1)
    h0 = layers.Dense(units, activation="tanh", name=INIT_H)(mean)
    c0 = layers.Dense(units, activation="tanh", name=INIT_C)(mean)

    txt = layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name=EMBEDDING)(caption)
    txt = layers.Dropout(dropout, name=TEXT_DROPOUT)(txt)
    txt = layers.LSTM(units, return_sequences=True, name=LSTM)(txt, initial_state=[h0, c0])

    context, _ = RegionAttention(attention_dim, attention_reg, name=ATTENTION)(values, txt, caption)
    # The merge model's sum plus the attended context. (Padding is kept out of the loss by
    # ignore_class=0 alone; see captioner.training.fit.)
    merged = txt + context + ops.expand_dims(img, 1)
    hidden = layers.Dense(units, activation="relu", name=DECODER_DENSE)(merged)
    logits = layers.Dense(vocab_size, name=LOGITS)(hidden)
    return keras.Model([image, caption], logits, name="attention_captioner")


def model_kind(model: keras.Model) -> str:
    """"attention" for a model with a region-attention layer, else "merge"."""
    return "attention" if any(isinstance(la, RegionAttention) for la in model.layers) else "merge"


def model_signature(model: keras.Model) -> tuple[int, int]:
    """(feature_dim, vocab_size) a trained model expects (for a grid: regions * channels)."""
    feature_dim = int(model.get_layer(IMAGE_INPUT).output.shape[-1])
    vocab_size = int(model.get_layer(LOGITS).kernel.shape[1])
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


def build_member(kind: str, params: ModelParams, vocab_size: int, feature_dim: int,
                 grid: tuple[int, int] | None = None) -> keras.Model:
    """A fresh, untrained ensemble member of `kind` ("merge" | "attention") with the `model`
    params, for features of width `feature_dim` (a grid file: `grid` = (regions, channels)).
    A merge member over a grid averages it itself (a merge member of an attention ensemble).
    Module-level and given plain values only, so a `functools.partial` of it pickles cheaply
    (a Ray task builds its member from it)."""
    mp = params
    if kind == "merge" and grid is None:
        return build_merge_model(vocab_size, feature_dim, mp.embedding_dim, mp.units, mp.dropout)
    if grid is None:
        raise ValueError("an attention member needs region-grid features (features.spatial: grid)")
    regions, channels = grid
    if kind == "merge":
        return build_merge_model(vocab_size, channels, mp.embedding_dim, mp.units, mp.dropout, regions)
    return build_attention_model(
        vocab_size, regions, channels, mp.embedding_dim, mp.units,
        mp.attention_dim, mp.dropout, mp.attention_reg, mp.region_dropout,
    )
