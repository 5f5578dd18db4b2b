"""`captioner export`: one self-contained TensorFlow SavedModel, image bytes -> caption.

The graph holds everything: image decoding (JPEG, PNG, GIF, BMP via `tf.io.decode_image`),
the squash to the CNN's input size (bicubic), the CNN backbone, the decoder (one model or an
averaged ensemble, merge or attention) and the model folder's decoding (`decoding.json`):
beam search of its width with its GNMT length penalty and n-gram blocking, up to its
`max_length` words, in one `tf.while_loop` that follows `captioner.decoding.search.beam_search`
step for step. Loading it needs TensorFlow only, not this package:

    m = tf.saved_model.load("exported/")
    out = m.caption(tf.constant([open("photo.jpg", "rb").read()]))
    out["caption"]  # tf.string (N,): space-joined words;  out["score"]: float32 (N,) log-probability

`decoding.json` inside the export records the decoding it does. JPEGs are decoded with the
accurate integer DCT as PIL decodes them (with TF's default fast DCT, 1 caption in 5 of the
Flickr8k merge preset differed from the CLI's; with it, 40 of 40 dev images agree); resizing is
TF's bicubic, so an image that needs resizing can still differ in the last bits.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import tensorflow as tf

from captioner.config.decoding import DecodingConfig
from captioner.decoding.captioner import Captioner
from captioner.model.folder import write_decoding
from captioner.datasets.text import END, PAD, START, UNK

__all__ = ["CaptionGraph", "export_savedmodel"]

class CaptionGraph(tf.Module):
    """The exported module: `caption(images)` with images a (N,) tf.string of encoded files."""

    def __init__(self, cap: Captioner, config: DecodingConfig) -> None:
        super().__init__(name="captioner")
        self.cnn = cap.backbone.model
        self.members = list(cap.models)  # tracked: their variables are saved
        self._decoder = cap.decoder
        self._pre = cap.backbone.preprocess_graph
        self.size = cap.backbone.input_size
        self.max_length = int(config.max_length)
        self.beam = int(config.beam_width)
        self.length_penalty = float(config.length_penalty)
        self.block = int(config.block_repeat_ngram)
        idx = cap.vocab.index
        self.end = idx[END]
        self.start = idx[START]
        self.tokens = tf.constant(list(cap.vocab.tokens))
        vsize = len(cap.vocab.tokens)
        ban = [idx[PAD], idx[START], idx[UNK]]
        self.ban = tf.constant([-float("inf") if i in ban else 0.0 for i in range(vsize)], tf.float32)
        self.caption = tf.function(self._caption, input_signature=[tf.TensorSpec([None], tf.string)])

    def _read(self, data: tf.Tensor) -> tf.Tensor:
        # JPEG with the accurate integer DCT, as PIL decodes it (TF's default is the fast one)
        image = tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.ensure_shape(tf.io.decode_image(data, channels=3, expand_animations=False), [None, None, 3]),
        )
        image = tf.image.resize(tf.cast(image, tf.float32), [self.size, self.size], method="bicubic")
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    def _bans(self, seqs: tf.Tensor, t: tf.Tensor, vsize: int) -> tf.Tensor:
        """(R, V) True where the next token would repeat an n-gram already in that row of
        `seqs` (R, max_length; its first `t` tokens are real): `repeated_ngram_bans` in ops."""
        n, length = self.block, self.max_length
        if n < 1 or length < n:
            return tf.zeros([tf.shape(seqs)[0], vsize], tf.bool)
        width = length - n + 1  # n-gram start positions i = 0 .. width - 1
        nxt = seqs[:, n - 1 : n - 1 + width]  # the n-gram's last token, for each start position
        valid = tf.range(width) < t - n + 1  # the whole n-gram lies in the first t tokens
        match = tf.broadcast_to(valid[None, :], tf.shape(nxt))
        if n > 1:  # ... and its first n-1 tokens are the last n-1 of the row
            heads = tf.stack([seqs[:, j : j + width] for j in range(n - 1)], axis=2)  # (R, width, n-1)
            prefix = tf.gather(seqs, tf.maximum(t - n + 1 + tf.range(n - 1), 0), axis=1)  # (R, n-1)
            match = tf.logical_and(match, tf.reduce_all(tf.equal(heads, prefix[:, None, :]), axis=2))
        hits = tf.one_hot(nxt, vsize, on_value=True, off_value=False, dtype=tf.bool)
        return tf.reduce_any(tf.logical_and(hits, match[:, :, None]), axis=1)

    def _logp(self, image, words, h, c, seqs, t, n, k):
        """The next word's log-probabilities (n, k, V) with the special tokens and the
        n-gram repeats banned, and the new LSTM state."""
        logp, h, c, _ = self._decoder.graph_step(image, words, h, c)
        vsize = self.ban.shape[0]
        logp = logp + self.ban
        if self.block > 0:
            bans = self._bans(tf.reshape(seqs, [n * k, self.max_length]), t, vsize)
            logp = tf.where(bans, -float("inf"), logp)
        return tf.reshape(logp, [n, k, vsize]), h, c

    def _caption(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(self._read, images, fn_output_signature=tf.TensorSpec([self.size, self.size, 3], tf.uint8))
        return self.decode(self.cnn(self._pre(pixels), training=False))

    def decode(self, feats: tf.Tensor) -> dict[str, tf.Tensor]:
        """CNN features (N, ...) -> {"caption": (N,) tf.string, "score": (N,) float32}."""
        image, h, c = self._decoder.graph_start(feats)
        n, k, length = tf.shape(feats)[0], self.beam, self.max_length
        vsize = self.ban.shape[0]
        image = tf.repeat(image, k, axis=0)  # (n*k, width): rows are (image, beam)
        h, c = tf.repeat(h, k, axis=0), tf.repeat(c, k, axis=0)
        end = tf.constant(self.end, tf.int32)
        words = tf.fill([n * k], tf.constant(self.start, tf.int32))
        first = tf.concat([tf.zeros([1]), tf.fill([k - 1], -float("inf"))], axis=0)
        scores = tf.tile(first[None, :], [n, 1])  # all beams start identical: expand only the first
        seqs = tf.zeros([n, k, length], tf.int32)
        done = tf.zeros([n, k], tf.bool)
        lengths = tf.zeros([n, k], tf.int32)
        pad_only = tf.one_hot(0, vsize, on_value=0.0, off_value=-float("inf"))  # a finished beam's row

        def body(t, words, h, c, scores, seqs, done, lengths):
            logp, h, c = self._logp(image, words, h, c, seqs, t, n, k)
            logp = tf.where(done[:, :, None], pad_only, logp)  # a finished beam extends with padding, free
            cand = tf.reshape(scores[:, :, None] + logp, [n, k * vsize])
            scores, top = tf.math.top_k(cand, k=k, sorted=True)
            beam, token = top // vsize, top % vsize
            rows = tf.reshape(tf.range(n)[:, None] * k + beam, [-1])
            h, c = tf.gather(h, rows), tf.gather(c, rows)
            seqs = tf.gather(seqs, beam, axis=1, batch_dims=1)
            seqs = tf.tensor_scatter_nd_update(  # seqs[:, :, t] = token
                tf.transpose(seqs, [2, 0, 1]), [[t]], token[None])
            seqs = tf.transpose(seqs, [1, 2, 0])
            was_done = tf.gather(done, beam, axis=1, batch_dims=1)
            lengths = tf.gather(lengths, beam, axis=1, batch_dims=1) + tf.cast(~was_done, tf.int32)
            done = tf.logical_or(was_done, tf.equal(token, end))
            return t + 1, tf.reshape(token, [-1]), h, c, scores, seqs, done, lengths

        def more(t, words, h, c, scores, seqs, done, lengths):
            return tf.logical_and(t < length, ~tf.reduce_all(done))

        t, words, h, c, scores, seqs, done, lengths = tf.while_loop(
            more, body, [tf.constant(0), words, h, c, scores, seqs, done, lengths])
        # A beam still open after max_length words ends there if endseq is its most likely next
        # word, else it is cut there, scored on its words only (as beam_search).
        logp, _, _ = self._logp(image, words, h, c, seqs, t, n, k)
        ends = tf.logical_and(~done, tf.equal(tf.argmax(logp, axis=2, output_type=tf.int32), end))
        scores = scores + tf.where(ends, logp[:, :, self.end], 0.0)
        lengths = lengths + tf.cast(ends, tf.int32)
        norm = ((5.0 + tf.cast(lengths, tf.float32)) / 6.0) ** self.length_penalty
        best = tf.argmax(scores / norm, axis=1, output_type=tf.int32)
        ids = tf.gather(seqs, best, axis=1, batch_dims=1)  # (n, max_length)
        score = tf.gather(scores, best, axis=1, batch_dims=1)
        keep = tf.logical_and(ids > 0, tf.not_equal(ids, end))
        texts = tf.strings.reduce_join(tf.ragged.boolean_mask(tf.gather(self.tokens, ids), keep), axis=1, separator=" ")
        return {"caption": texts, "score": score}


def _valid_variable_names(models: list) -> None:
    """SavedModel names each variable's graph copy after it, and a name may not start with `_`
    (EfficientNet-Lite0's torch-style layer names `_bn1`, ...): prefix those names with `v`.
    Only the names in the exported graph change; the weights and the Keras models do not."""
    for model in models:
        for var in model.variables:
            tf_var = getattr(var, "value", var)
            name = getattr(tf_var, "_handle_name", None)  # `name` and `_shared_name` derive from it
            if isinstance(name, str) and not re.match(r"[A-Za-z0-9.]", name):
                tf_var._handle_name = "v" + name


def export_savedmodel(cap: Captioner, out: str | os.PathLike[str], config: DecodingConfig | None = None) -> Path:
    """Write `cap` as a SavedModel at `out` decoding as `config` (default: the model folder's
    decoding.json); returns `out`."""
    config = config or cap.decoding
    module = CaptionGraph(cap, config)
    _valid_variable_names([cap.backbone.model, *cap.models])
    out = Path(out)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.caption})
    write_decoding(out, config)
    return out
