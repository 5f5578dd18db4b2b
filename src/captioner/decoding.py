"""Caption generation: batched beam search (greedy = width 1) over a compiled step function.

Calling `model.predict` once per word is far too slow in Keras 3; instead the trained
layers are run one word at a time inside one `tf.function`: embedding -> LSTM cell ->
(attention over the regions) -> add image -> dense -> log-softmax, for a whole batch of
(image, beam) rows at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from captioner.text import END, PAD, START, UNK, Vocabulary


class _Merge:
    """One merge model, one word at a time. Image state: the image branch's (N, units) vector."""

    def __init__(self, model: keras.Model, regions: int = 0) -> None:
        self.layers = {n: model.get_layer(n) for n in ("image_dense", "embedding", "decoder_dense", "logits")}
        self.cell = model.get_layer("lstm").cell
        self.units = int(self.cell.units)
        self.width = self.units
        self.regions = 0
        self.pool = regions  # > 0: given a flattened region grid, average it to the pooled feature
        names = {la.name for la in model.layers}
        self.grid_layers = [model.get_layer(n) for n in ("regions", "pooled")] if "pooled" in names else []

    def start(self, features: tf.Tensor):
        if self.pool:
            features = tf.reduce_mean(tf.reshape(features, [tf.shape(features)[0], self.pool, -1]), axis=1)
        for layer in self.grid_layers:  # a merge model built over a grid averages it itself
            features = layer(features)
        image = self.layers["image_dense"](features)
        zeros = tf.zeros_like(image)
        return image, zeros, zeros

    def step(self, image: tf.Tensor, words: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
        la = self.layers
        emb = tf.gather(la["embedding"].embeddings, words)  # no mask: one word per row
        out, (h2, c2) = self.cell(emb, [h, c], training=False)
        return tf.nn.log_softmax(la["logits"](la["decoder_dense"](out + image))), h2, c2, None


class _Attention:
    """One attention model, one word at a time. Image state: its pooled image vector, region
    values and attention keys, flattened to (N, units + R * (units + attention_dim)) so that
    beams and ensembles stay 2-d."""

    def __init__(self, model: keras.Model) -> None:
        names = ("regions", "pooled", "image_dense", "region_dense", "init_h", "init_c", "embedding",
                 "decoder_dense", "logits")
        self.layers = {n: model.get_layer(n) for n in names}
        self.att = model.get_layer("attention")
        self.cell = model.get_layer("lstm").cell
        self.units = int(self.cell.units)
        self.regions = int(self.layers["regions"].target_shape[0])
        self.att_dim = int(self.att.attention_dim)
        self.width = self.units + self.regions * (self.units + self.att_dim)

    def start(self, features: tf.Tensor):
        la = self.layers
        grid = la["regions"](features)
        pooled = la["image_dense"](la["pooled"](grid))
        values = la["region_dense"](grid)  # (N, R, units)
        mean = tf.reduce_mean(values, axis=1)
        keys = self.att.keys(values)
        n = tf.shape(values)[0]
        image = tf.concat([pooled, tf.reshape(values, [n, -1]), tf.reshape(keys, [n, -1])], axis=1)
        return image, la["init_h"](mean), la["init_c"](mean)

    def step(self, image: tf.Tensor, words: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
        la, r = self.layers, self.regions
        pooled, values, keys = tf.split(image, [self.units, r * self.units, r * self.att_dim], axis=1)
        values = tf.reshape(values, [-1, r, self.units])
        keys = tf.reshape(keys, [-1, r, self.att_dim])
        emb = tf.gather(la["embedding"].embeddings, words)
        out, (h2, c2) = self.cell(emb, [h, c], training=False)
        alpha = self.att.weights_for(keys, out[:, None])[:, 0]  # (N, R)
        context = tf.einsum("nr,nrd->nd", alpha, values)
        return tf.nn.log_softmax(la["logits"](la["decoder_dense"](out + context + pooled))), h2, c2, alpha


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
    feature width reads it as a region grid and averages it.
    """

    def __init__(self, models: keras.Model | Sequence[keras.Model],
                 views: Sequence[tuple[int, int]] | None = None) -> None:
        from captioner.model import model_kind, model_signature

        models = [models] if isinstance(models, keras.Model) else list(models)
        if not models:
            raise ValueError("StepDecoder needs at least one model")
        if views is not None:
            self._init_views(models, [(int(a), int(b)) for a, b in views])
            return
        self._views: list[tuple[int, int]] | None = None
        attention = [_Attention(m) for m in models if model_kind(m) == "attention"]
        regions = {m.regions for m in attention}
        if len(regions) > 1:
            raise ValueError(f"ensemble members attend over different region counts: {sorted(regions)}")
        self.regions = regions.pop() if regions else 0
        grid_dim = {model_signature(m)[0] for m in models if model_kind(m) == "attention"}
        self._members = []
        signatures = set()
        for m in models:
            dim, vocab = model_signature(m)
            if model_kind(m) == "attention":
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
        from captioner.model import model_kind, model_signature

        if len(views) != len(models):
            raise ValueError(f"{len(views)} feature views for {len(models)} ensemble members")
        self._views, self._members, vocabs, regions = views, [], set(), set()
        for i, (m, (a, b)) in enumerate(zip(models, views)):
            dim, vocab = model_signature(m)
            vocabs.add(vocab)
            if not 0 <= a < b:
                raise ValueError(f"member {i}: feature view ({a}, {b}) is empty or negative")
            if model_kind(m) == "attention" and b - a == dim:
                self._members.append(_Attention(m))
                regions.add(self._members[-1].regions)
            elif model_kind(m) != "attention" and (b - a) % dim == 0:
                self._members.append(_Merge(m, (b - a) // dim if b - a > dim else 0))
            else:
                raise ValueError(f"member {i} ({model_kind(m)}, features of width {dim}) cannot read "
                                 f"a feature view of width {b - a}")
        if len(vocabs) > 1:
            raise ValueError(f"ensemble members disagree on the vocabulary size: {sorted(vocabs)}")
        if len(regions) > 1:
            raise ValueError(f"ensemble members attend over different region counts: {sorted(regions)}")
        self.regions = regions.pop() if regions else 0
        self._compile(None)  # any width: a sub-ensemble may read only some of the columns given

    def _compile(self, dim: int | None) -> None:
        """The start and step functions, for features of width `dim` (None: any)."""
        self._widths = [m.width for m in self._members]
        self._splits = [m.units for m in self._members]
        self.units = sum(self._splits)
        self._start = tf.function(self._start_impl, input_signature=[tf.TensorSpec((None, dim), tf.float32)])
        self._step = tf.function(
            self._step_impl,
            input_signature=[
                tf.TensorSpec((None, sum(self._widths)), tf.float32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None, self.units), tf.float32),
                tf.TensorSpec((None, self.units), tf.float32),
            ],
        )

    def _start_impl(self, features: tf.Tensor):
        views = self._views or [None] * len(self._members)
        parts = [m.start(features if v is None else features[:, v[0] : v[1]]) for m, v in zip(self._members, views)]
        return tuple(tf.concat([p[i] for p in parts], axis=1) for i in range(3))

    def _step_impl(self, image: tf.Tensor, words: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
        logps, hs, cs, alphas = [], [], [], []
        images = tf.split(image, self._widths, axis=1)
        hs_in, cs_in = tf.split(h, self._splits, axis=1), tf.split(c, self._splits, axis=1)
        for m, img_i, h_i, c_i in zip(self._members, images, hs_in, cs_in):
            logp, h2, c2, alpha = m.step(img_i, words, h_i, c_i)
            logps.append(logp)
            hs.append(h2)
            cs.append(c2)
            if alpha is not None:
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


@dataclass(frozen=True)
class Caption:
    """A generated caption: its words, total log-probability and, when asked of an attention
    model, the attention weights over the regions while producing each word (words x regions)."""

    words: list[str]
    logprob: float
    attention: np.ndarray | None = None


def _length_norm(lengths: np.ndarray, alpha: float) -> np.ndarray:
    """GNMT length penalty ((5 + len) / 6) ** alpha; 1 when alpha is 0."""
    return ((5.0 + lengths) / 6.0) ** alpha


def repeated_ngram_bans(seqs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, tokens) whose next token would repeat an n-gram already in that row of `seqs`.

    >>> repeated_ngram_bans(np.array([[5, 6, 7, 5, 6]]), 3)
    (array([0]), array([7]))
    """
    rows: list[int] = []
    tokens: list[int] = []
    if n < 1 or seqs.shape[1] < n - 1:
        return np.array(rows, int), np.array(tokens, int)
    for r, seq in enumerate(seqs.tolist()):
        prefix = seq[len(seq) - (n - 1) :] if n > 1 else []
        for i in range(len(seq) - n + 1):
            if seq[i : i + n - 1] == prefix:
                rows.append(r)
                tokens.append(seq[i + n - 1])
    return np.array(rows, int), np.array(tokens, int)


def beam_search(
    decoder: StepDecoder,
    features: np.ndarray,
    vocab: Vocabulary,
    beam_width: int = 1,
    max_length: int = 40,
    length_penalty: float = 0.0,
    block_repeat_ngram: int = 0,
    attention: bool = False,
) -> list[Caption]:
    """Decode one batch of images; width 1 is greedy. Stops at endseq or `max_length` words.

    Beams are ranked by total log-probability while searching; the final beam is chosen by
    log-probability divided by the GNMT length penalty when `length_penalty` > 0. A caption's
    `logprob` is the sum of the log-probabilities of exactly its words, plus that of endseq
    when it ended; the length penalty counts the same tokens. A beam that reaches
    `max_length` words ends there if endseq is its most likely next word, else it is cut
    there: the word it would have gone on with is neither returned nor scored. With
    `block_repeat_ngram` = n > 0, no caption repeats an n-gram ("a man in a red shirt and a
    man in a red shirt ..."). With `attention` (and an attention model), each caption keeps
    the attention weights of its words.
    """
    n, k = len(features), beam_width
    idx = vocab.index
    start, end = idx[START], idx[END]
    banned = [idx[PAD], idx[START], idx[UNK]]

    image, h, c = decoder.start(features)
    image = tf.repeat(image, k, axis=0)  # (n*k, width): stays a tensor, fed to every step as is
    h, c = np.repeat(h, k, axis=0), np.repeat(c, k, axis=0)
    r = decoder.regions if attention else 0
    atts = np.zeros((n, k, 0, r), np.float32)
    words = np.full(n * k, start, np.int32)
    scores = np.full((n, k), -np.inf, np.float32)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    seqs = np.zeros((n, k, 0), np.int32)
    done = np.zeros((n, k), bool)
    lengths = np.zeros((n, k), np.int32)

    for t in range(max_length + 1):  # + 1 so that max_length words can still end
        logp, h, c, alpha = decoder.step(image, words, h, c)
        vsize = logp.shape[1]
        logp[:, banned] = -np.inf
        if block_repeat_ngram > 0:
            rows_b, tokens_b = repeated_ngram_bans(seqs.reshape(n * k, -1), block_repeat_ngram)
            logp[rows_b, tokens_b] = -np.inf
        logp = logp.reshape(n, k, vsize)
        if t == max_length:
            # Every unfinished beam has max_length words: it ends if endseq is its most likely
            # next word, else it is cut here, scored on its words only.
            ends = ~done & (logp.argmax(axis=2) == end)
            scores = scores + np.where(ends, logp[:, :, end], 0.0).astype(np.float32)
            lengths = lengths + ends
            break
        # A finished beam extends only with padding, at no cost.
        logp[done] = -np.inf
        logp[done, 0] = 0.0
        cand = (scores[:, :, None] + logp).reshape(n, k * vsize)
        top = np.argpartition(-cand, k - 1, axis=1)[:, :k] if k > 1 else cand.argmax(1)[:, None]
        top_scores = np.take_along_axis(cand, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        scores = np.take_along_axis(top_scores, order, axis=1)
        beam, token = top // vsize, (top % vsize).astype(np.int32)

        rows = (np.arange(n)[:, None] * k + beam).ravel()
        h, c = h[rows], c[rows]
        seqs = np.concatenate([np.take_along_axis(seqs, beam[:, :, None], axis=1), token[:, :, None]], axis=2)
        if r:
            step_att = np.take_along_axis(alpha.reshape(n, k, r), beam[:, :, None], axis=1)
            atts = np.concatenate([np.take_along_axis(atts, beam[:, :, None, None], axis=1), step_att[:, :, None]], 2)
        was_done = np.take_along_axis(done, beam, axis=1)
        lengths = np.take_along_axis(lengths, beam, axis=1) + (~was_done)
        done = was_done | (token == end)
        words = token.ravel()
        if done.all():
            break

    # Unfinished beams at the length limit count as finished there.
    final = scores / _length_norm(lengths.astype(np.float32), length_penalty)
    best = final.argmax(axis=1)
    out = []
    for i in range(n):
        ids = seqs[i, best[i]].tolist()
        words_i = [vocab.tokens[t] for t in ids if t not in (0, end)]
        att_i = atts[i, best[i], : len(words_i)] if r else None  # real words come first
        out.append(Caption(words_i, float(scores[i, best[i]]), att_i))
    return out


def generate_captions(
    decoder: StepDecoder,
    features: np.ndarray,
    vocab: Vocabulary,
    beam_width: int,
    max_length: int,
    length_penalty: float,
    batch_size: int,
    progress: bool = True,
    block_repeat_ngram: int = 0,
    attention: bool = False,
) -> list[Caption]:
    """Beam search over all images in batches, with a progress bar."""
    from tqdm.auto import tqdm

    out: list[Caption] = []
    with tqdm(total=len(features), desc="captioning", unit="img", disable=not progress) as bar:
        for i in range(0, len(features), batch_size):
            chunk = features[i : i + batch_size]
            out.extend(
                beam_search(
                    decoder, chunk, vocab, beam_width, max_length, length_penalty, block_repeat_ngram, attention
                )
            )
            bar.update(len(chunk))
    return out


def caption_texts(captions: Sequence[Caption]) -> list[str]:
    """Space-joined words of each caption."""
    return [" ".join(c.words) for c in captions]
