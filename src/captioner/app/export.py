"""`captioner export`: one self-contained TensorFlow SavedModel, image bytes -> caption.

The graph holds everything: image reading as the CLI reads a file (decoding, EXIF orientation,
grey, 16-bit and transparent images, the squash to the CNN's input size: `read_image_graph`),
the CNN backbone, the decoder (one model or an
averaged ensemble, merge or attention) and the model folder's decoding (`decoding.json`):
beam search of its width with its GNMT length penalty and n-gram blocking, up to its
`max_length` words, in one `tf.while_loop` that follows `captioner.decoding.search.beam_search`
step for step. Loading it needs TensorFlow only, not this package:

    m = tf.saved_model.load("exported/")
    out = m.caption(tf.constant([open("photo.jpg", "rb").read()]))
    out["caption"]  # tf.string (N,): space-joined words;  out["score"]: float32 (N,) log-probability

`decoding.json` inside the export records the decoding it does. `export_savedmodel(...,
serving=NAME)` writes TF Serving's layout instead, ``<out>/<NAME>/<version>/`` (the next free
integer version), which `tensorflow_model_server --model_base_path=<out>/<NAME>` serves.
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

__all__ = ["CaptionGraph", "exif_orientation", "export_savedmodel", "read_image_graph", "serving_version_dir"]


# ---------------------------------------------------------------- the CLI's image reading, in TensorFlow ops
#
# `captioner.features.images.read_image` is the one definition of how a file becomes the CNN's
# input (the CLI, the service, extract_features and evaluate all call it): JPEG decoded by libjpeg
# at 1/2, 1/4 or 1/8 scale when both sides stay >= the input size (PIL's `draft`), the accurate
# integer DCT, EXIF orientation applied, grey or 16-bit samples to 8-bit RGB (16-bit / 257,
# rounded), transparency composited onto white, then squashed to size x size by PIL's bicubic
# filter, which widens with the reduction (antialiased). The functions below do the same in
# TensorFlow ops for the SavedModel; tests/unit/app/test_export.py holds them to it on full-size,
# odd-aspect, EXIF-rotated, greyscale, 16-bit and transparent images (pixels within 1/255 on
# average, the same captions).

_SCAN = 1 << 17  # bytes searched for the EXIF block (it sits in the first APP segments)


def _u8(raw: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
    """Byte `i` of `raw` as int32 (0 past the end: no out-of-range error inside the graph)."""
    n = tf.shape(raw)[0]
    return tf.where(i < n, tf.cast(tf.gather(raw, tf.clip_by_value(i, 0, tf.maximum(n - 1, 0))), tf.int32), 0)


def _u16(raw: tf.Tensor, i: tf.Tensor, big: tf.Tensor) -> tf.Tensor:
    a, b = _u8(raw, i), _u8(raw, i + 1)
    return tf.where(big, a * 256 + b, b * 256 + a)


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8) of JPEG bytes; 1 when there is none or it cannot be read."""
    raw = tf.io.decode_raw(tf.strings.substr(data, 0, tf.minimum(tf.strings.length(data), _SCAN)), tf.uint8)

    def walking(pos, tiff):
        marker = _u8(raw, pos + 1)
        return (tiff < 0) & (_u8(raw, pos) == 0xFF) & (marker >= 0xE0) & (marker <= 0xEF) & (pos < _SCAN)

    def step(pos, tiff):  # APPn segments: FF En <length, 2 bytes, big-endian> <payload>
        exif = (_u8(raw, pos + 1) == 0xE1) & tf.reduce_all(
            tf.stack([_u8(raw, pos + 4 + k) for k in range(6)]) == tf.constant([69, 120, 105, 102, 0, 0]))
        return pos + 2 + _u16(raw, pos + 2, tf.constant(True)), tf.where(exif, pos + 10, -1)

    _, tiff = tf.while_loop(walking, step, (tf.constant(2), tf.constant(-1)), maximum_iterations=32)
    big = _u8(raw, tiff) == 0x4D  # "MM": big-endian TIFF, "II": little-endian
    ifd = tiff + _u16(raw, tiff + 4 + tf.where(big, 2, 0), big)  # IFD0 offsets past 64 KiB: not in practice
    count = tf.minimum(_u16(raw, ifd, big), 64)
    entries = ifd + 2 + 12 * tf.range(64)
    tags = tf.map_fn(lambda e: _u16(raw, e, big), entries)
    hit = (tags == 0x0112) & (tf.range(64) < count)
    value = _u16(raw, tf.reduce_sum(tf.where(hit, entries, 0)) + 8, big)
    found = (tiff >= 0) & tf.reduce_any(hit) & (value >= 1) & (value <= 8)
    return tf.where(found, value, 1)


def _orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """PIL's `ImageOps.exif_transpose` for orientations 1-8."""
    t = lambda x: tf.transpose(x, [1, 0, 2])  # noqa: E731
    return tf.switch_case(orientation - 1, [
        lambda: image,                                   # 1
        lambda: tf.image.flip_left_right(image),         # 2
        lambda: tf.image.rot90(image, 2),                # 3
        lambda: tf.image.flip_up_down(image),            # 4
        lambda: t(image),                                # 5 transpose
        lambda: tf.image.rot90(image, 3),                # 6 (PIL ROTATE_270: a quarter turn clockwise)
        lambda: tf.image.rot90(t(image), 2),             # 7 transverse
        lambda: tf.image.rot90(image, 1),                # 8 (PIL ROTATE_90)
    ])


def _read_jpeg(data: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.io.extract_jpeg_shape(data)
    scale = tf.minimum(shape[0] // size, shape[1] // size)  # PIL's draft: the largest 1/r keeping both >= size
    branch = tf.where(scale >= 8, 3, tf.where(scale >= 4, 2, tf.where(scale >= 2, 1, 0)))
    image = tf.switch_case(branch, [
        lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE") for r in (1, 2, 4, 8)])
    return tf.cast(_orient(image, exif_orientation(data)), tf.float32)


def _read_other(data: tf.Tensor) -> tf.Tensor:
    """PNG (8 or 16 bits, grey, alpha), GIF, BMP -> float RGB in 0..255, transparency on white."""
    def png():  # 8-bit samples come back x 257, 16-bit ones as they are: / 257 is exact for the first
        return tf.round(tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.float32) / 257.0)

    is_png = tf.equal(tf.strings.substr(data, 0, 4), b"\x89PNG")
    x = tf.cond(is_png, png,
                lambda: tf.cast(tf.io.decode_image(data, channels=0, expand_animations=False), tf.float32))
    x = tf.ensure_shape(x, [None, None, None])
    channels = tf.shape(x)[2]
    colour = tf.cond(channels >= 3, lambda: x[:, :, :3], lambda: tf.tile(x[:, :, :1], [1, 1, 3]))
    alpha = tf.cond(tf.equal(channels % 2, 0), lambda: x[:, :, -1:] / 255.0, lambda: tf.ones_like(x[:, :, :1]))
    return tf.round(colour * alpha + 255.0 * (1.0 - alpha))


def read_image_graph(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded image bytes -> (size, size, 3) uint8, as `read_image` (see above)."""
    image = tf.cond(tf.io.is_jpeg(data), lambda: _read_jpeg(data, size), lambda: _read_other(data))
    image = tf.image.resize(image, [size, size], method="bicubic", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

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
        """Encoded bytes -> (size, size, 3) uint8, as `captioner.features.images.read_image` reads a file."""
        return read_image_graph(data, self.size)

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


def serving_version_dir(base: str | os.PathLike[str]) -> Path:
    """TF Serving's next version folder under a model's base path: ``<base>/<n + 1>`` after the
    largest integer-named folder (``<base>/1`` for the first)."""
    base = Path(base)
    versions = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
    return base / str(max(versions, default=0) + 1)


def export_savedmodel(cap: Captioner, out: str | os.PathLike[str], config: DecodingConfig | None = None,
                      serving: str | None = None) -> Path:
    """Write `cap` as a SavedModel decoding as `config` (default: the model folder's
    decoding.json): at `out`, or with `serving` (a model name) in TF Serving's layout at
    ``<out>/<serving>/<next version>/``. Returns the SavedModel's folder. Consensus reranking
    (`config.rerank`) is refused with a ValueError: the graph keeps the most likely beam."""
    config = config or cap.decoding
    if config.rerank != "beam":
        raise ValueError(f"the SavedModel decodes by beam search inside its graph and cannot rerank by "
                         f"{config.rerank}; export with --rerank beam (the decoding settings ask for rerank {config.rerank!r})")
    module = CaptionGraph(cap, config)
    _valid_variable_names([cap.backbone.model, *cap.models])
    if serving is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", serving):
            raise ValueError(f"--tf-serving: {serving!r} is not a model name (letters, digits, _ . -)")
        out = serving_version_dir(Path(out) / serving)
    out = Path(out)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.caption})
    write_decoding(out, config)
    return out
