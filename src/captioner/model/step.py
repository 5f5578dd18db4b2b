"""A trained captioner one word at a time: the public step API every decoding loop uses
(beam search, SCST sampling, the SavedModel export).

Calling `model.predict` once per word is far too slow in Keras 3; instead the trained layers
are run one word at a time: embedding -> LSTM cell -> (attention over the regions) -> add
image -> dense -> log-softmax, for a whole batch of (image, beam) rows at once.

`StepDecoder(models)` takes one model or an ensemble (merge and attention members mixed).
`start(features)` gives the image state and the initial LSTM state; `step(image, words, h, c)`
gives the next word's log-probabilities (averaged over the members), the new state and the
attention weights. Both take and return numpy (compiled once); `graph_start`/`graph_step` are
the same computation as TensorFlow ops, to compose into a caller's own `tf.function` or
`tf.while_loop`; `feature_dim` is the feature width the decoder reads (None: any).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from captioner.model.build import (
    ATTENTION,
    DECODER_DENSE,
    EMBEDDING,
    IMAGE_DENSE,
    INIT_C,
    INIT_H,
    LOGITS,
    LSTM,
    POOLED,
    REGION_DENSE,
    REGIONS,
    model_kind,
    model_signature,
)

__all__ = ["StepDecoder"]


class _Merge:
    """One merge model, one word at a time. Image state: the image branch's (N, units) vector."""

    def __init__(self, model: keras.Model, regions: int = 0) -> None:
        self.layers = {n: model.get_layer(n) for n in (IMAGE_DENSE, EMBEDDING, DECODER_DENSE, LOGITS)}
        self.cell = model.get_layer(LSTM).cell
        self.units = int(self.cell.units)
        self.width = self.units
        self.regions = 0
        self.pool = regions  # > 0: given a flattened region grid, average it to the pooled feature
        names = {la.name for la in model.layers}
        self.grid_layers = [model.get_layer(n) for n in (REGIONS, POOLED)] if POOLED in names else []

    def start(self, features: tf.Tensor):
        if self.pool:
            features = tf.reduce_mean(tf.reshape(features, [tf.shape(features)[0], self.pool, -1]), axis=1)
        for layer in self.grid_layers:  # a merge model built over a grid averages it itself
            features = layer(features)
        image = self.layers[IMAGE_DENSE](features)
        zeros = tf.zeros_like(image)
        return image, zeros, zeros

    def step(self, image: tf.Tensor, words: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
        la = self.layers
        emb = tf.gather(la[EMBEDDING].embeddings, words)  # no mask: one word per row
        out, (h2, c2) = self.cell(emb, [h, c], training=False)
        return tf.nn.log_softmax(la[LOGITS](la[DECODER_DENSE](out + image))), h2, c2, None



class _Attention:
    """One attention model, one word at a time. Image state: its pooled image vector, region
    values and attention keys, flattened to (N, units + R * (units + attention_dim)) so that
    beams and ensembles stay 2-d."""

    def __init__(self, model: keras.Model) -> None:
        names = (REGIONS, POOLED, IMAGE_DENSE, REGION_DENSE, INIT_H, INIT_C, EMBEDDING,
                 DECODER_DENSE, LOGITS)
        self.layers = {n: model.get_layer(n) for n in names}
        self.att = model.get_layer(ATTENTION)
        self.cell = model.get_layer(LSTM).cell
        self.units = int(self.cell.units)
        self.regions = int(self.layers[REGIONS].target_shape[0])
        self.att_dim = int(self.att.attention_dim)
        self.width = self.units + self.regions * (self.units + self.att_dim)

    def start(self, features: tf.Tensor):
        la = self.layers
        grid = la[REGIONS](features)
        pooled = la[IMAGE_DENSE](la[POOLED](grid))
        values = la[REGION_DENSE](grid)  # (N, R, units)
        mean = tf.reduce_mean(values, axis=1)
        keys = self.att.keys(values)
        n = tf.shape(values)[0]
        image = tf.concat([pooled, tf.reshape(values, [n, -1]), tf.reshape(keys, [n, -1])], axis=1)
        return image, la[INIT_H](mean), la[INIT_C](mean)

    def step(self, image: tf.Tensor, words: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
        la, r = self.layers, self.regions
        pooled, values, keys = tf.split(image, [self.units, r * self.units, r * self.att_dim], axis=1)
        values = tf.reshape(values, [-1, r, self.units])
        keys = tf.reshape(keys, [-1, r, self.att_dim])
        emb = tf.gather(la[EMBEDDING].embeddings, words)
        out, (h2, c2) = self.cell(emb, [h, c], training=False)
        alpha = self.att.weights_for(keys, out[:, None])[:, 0]  # (N, R)
        context = tf.einsum("nr,nrd->nd", alpha, values)
        return tf.nn.log_softmax(la[LOGITS](la[DECODER_DENSE](out + context + pooled))), h2, c2, alpha



class StepDecoder:
    """One-word-at-a-time view of a trained captioner (merge or attention), or of an ensemble.

    An ensemble averages the members' next-word probabilities; their image states and LSTM
    states are concatenated side by side, so beam search sees 2-d arrays whatever the members.
    `regions` > 0 when some member attends over regions: `step` then also returns the
    attention weights (averaged over the attention members), and the features are region
    grids; merge members of such an ensemble see the grid's average over regions, which is
    exactly the pooled feature they were trained on.

    `views` lets members read different features (say, different backbones): member i reads
    columns `views[i] = (start, stop)` of the features given, which are then the members'
    own features side by side. A merge member whose view is a whole number of times its
    feature width reads it as a region grid and averages it. Attention members over views may
    attend over different grids (EfficientNet-Lite0's 7x7 with Lite1's 8x8): all of them choose
    the words, and the attention weights `step` returns are those of the members on the first
    attention member's grid (`regions`), averaged.
    """

    def __init__(self, models: keras.Model | Sequence[keras.Model],
                 views: Sequence[tuple[int, int]] | None = None) -> None:
        models = [models] if isinstance(models, keras.Model) else list(models)
        if not models:
            raise ValueError("StepDecoder needs at least one model")
        if views is not None:
            self._init_views(models, [(int(a), int(b)) for a, b in views])
            return
        self._views: list[tuple[int, int]] | None = None
        attention = [_Attention(m) for m in models if model_kind(m) == ATTENTION]
        regions = {m.regions for m in attention}
        if len(regions) > 1:
            raise ValueError(f"ensemble members attend over different region counts: {sorted(regions)}")
        self.regions = regions.pop() if regions else 0
        grid_dim = {model_signature(m)[0] for m in models if model_kind(m) == ATTENTION}
        self._members = []
        signatures = set()
        for m in models:
            dim, vocab = model_signature(m)
            if model_kind(m) == ATTENTION:
                self._members.append(attention.pop(0))
            elif grid_dim and dim * self.regions in grid_dim:  # a pooled merge member among grids
                self._members.append(_Merge(m, self.regions))
                dim *= self.regions
            else:
                self._members.append(_Merge(m))
            signatures.add((dim, vocab))
        if len(signatures) > 1:
            raise ValueError(f"ensemble members disagree on (feature dim, vocab size): {sorted(signatures)}")
        self._compile(signatures.pop()[0])

    def _init_views(self, models: list[keras.Model], views: list[tuple[int, int]]) -> None:
        if len(views) != len(models):
            raise ValueError(f"{len(views)} feature views for {len(models)} ensemble members")
        self._views, self._members, vocabs, regions = views, [], set(), []
        for i, (m, (a, b)) in enumerate(zip(models, views)):
            dim, vocab = model_signature(m)
            vocabs.add(vocab)
            if not 0 <= a < b:
                raise ValueError(f"member {i}: feature view ({a}, {b}) is empty or negative")
            if model_kind(m) == ATTENTION and b - a == dim:
                self._members.append(_Attention(m))
                regions.append(self._members[-1].regions)
            elif model_kind(m) != ATTENTION and (b - a) % dim == 0:
                self._members.append(_Merge(m, (b - a) // dim if b - a > dim else 0))
            else:
                raise ValueError(f"member {i} ({model_kind(m)}, features of width {dim}) cannot read "
                                 f"a feature view of width {b - a}")
        if len(vocabs) > 1:
            raise ValueError(f"ensemble members disagree on the vocabulary size: {sorted(vocabs)}")
        self.regions = regions[0] if regions else 0  # the attention map's grid: the first attention member's
        self._compile(None)  # any width: a sub-ensemble may read only some of the columns given

    def _compile(self, dim: int | None) -> None:
        """The start and step functions, for features of width `dim` (None: any)."""
        self._feature_dim = dim
        self._widths = [m.width for m in self._members]
        self._splits = [m.units for m in self._members]
        self.units = sum(self._splits)
        self._start = tf.function(self.graph_start, input_signature=[tf.TensorSpec((None, dim), tf.float32)])
        self._step = tf.function(
            self.graph_step,
            input_signature=[
                tf.TensorSpec((None, sum(self._widths)), tf.float32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None, self.units), tf.float32),
                tf.TensorSpec((None, self.units), tf.float32),
            ],
        )

    @property
    def feature_dim(self) -> int | None:
        """The width of the features `start` takes (None: any, for an ensemble over views)."""
        return self._feature_dim

    def graph_start(self, features: tf.Tensor):
        """`start` as TensorFlow ops: (image state, h, c) tensors."""
        views = self._views or [None] * len(self._members)
        parts = [m.start(features if v is None else features[:, v[0] : v[1]]) for m, v in zip(self._members, views)]
        return tuple(tf.concat([p[i] for p in parts], axis=1) for i in range(3))

    def graph_step(self, image: tf.Tensor, words: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
        """`step` as TensorFlow ops: (log-probabilities, h, c, attention weights) tensors."""
        logps, hs, cs, alphas = [], [], [], []
        images = tf.split(image, self._widths, axis=1)
        hs_in, cs_in = tf.split(h, self._splits, axis=1), tf.split(c, self._splits, axis=1)
        for m, img_i, h_i, c_i in zip(self._members, images, hs_in, cs_in):
            logp, h2, c2, alpha = m.step(img_i, words, h_i, c_i)
            logps.append(logp)
            hs.append(h2)
            cs.append(c2)
            if alpha is not None and m.regions == self.regions:  # the map's grid only
                alphas.append(alpha)
        n = float(len(logps))
        logp = logps[0] if n == 1 else tf.reduce_logsumexp(tf.stack(logps), axis=0) - tf.math.log(n)
        alpha = tf.reduce_mean(tf.stack(alphas), axis=0) if alphas else tf.zeros([tf.shape(words)[0], 0])
        return logp, tf.concat(hs, axis=1), tf.concat(cs, axis=1), alpha

    def start(self, features: np.ndarray) -> tuple[tf.Tensor, np.ndarray, np.ndarray]:
        """Image features -> (image state (a tensor, reused every step), initial h, initial c)."""
        image, h, c = self._start(tf.constant(features, tf.float32))
        return image, h.numpy(), c.numpy()

    def step(self, image: tf.Tensor, words: np.ndarray, h: np.ndarray, c: np.ndarray):
        """Log-probabilities of the next word, the new LSTM state and the attention weights
        ((N, regions); (N, 0) without attention members)."""
        logp, h2, c2, alpha = self._step(image, tf.constant(words, tf.int32), h, c)
        return logp.numpy(), h2.numpy(), c2.numpy(), alpha.numpy()

