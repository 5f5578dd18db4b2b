"""`captioner export`: one self-contained TensorFlow SavedModel, image bytes -> caption.

The graph holds everything: image decoding (JPEG, PNG, GIF, BMP via `tf.io.decode_image`),
the squash to the CNN's input size (bicubic), the CNN backbone, the decoder (one model or an
averaged ensemble, merge or attention) and a greedy decoding loop (`tf.while_loop`) up to the
model folder's `max_length` words. Loading it needs TensorFlow only, not this package:

    m = tf.saved_model.load("exported/")
    out = m.caption(tf.constant([open("photo.jpg", "rb").read()]))
    out["caption"]  # tf.string (N,): space-joined words;  out["score"]: float32 (N,) log-probability

The loop is greedy: a folder whose decoding.json asks for beam search, a length penalty or
n-gram blocking is exported greedy (with the same max_length), and the export says so
(`decoding.json` inside the export records what it does). Pixels differ from the CLI's PIL
decoding in the last bits (TF's JPEG decoder and resize), so a caption on the edge between
two words may differ.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import tensorflow as tf

from captioner.model_folder import Captioner, DecodingConfig
from captioner.text import END, PAD, START, UNK

VGG_BGR_MEAN = (103.939, 116.779, 123.68)


def _preprocess(name: str):
    """The backbone's uint8 -> network input mapping, in TensorFlow ops."""
    if name == "efficientnet_lite0":
        from captioner.backbones.efficientnet_lite0 import LITE0

        return lambda x: (tf.cast(x, tf.float32) - LITE0.mean) / LITE0.std
    if name == "vgg16":
        return lambda x: tf.reverse(tf.cast(x, tf.float32), axis=[-1]) - tf.constant(VGG_BGR_MEAN)
    raise ValueError(f"export: no TensorFlow preprocessing for backbone {name!r}")


class CaptionGraph(tf.Module):
    """The exported module: `caption(images)` with images a (N,) tf.string of encoded files."""

    def __init__(self, cap: Captioner, max_length: int) -> None:
        super().__init__(name="captioner")
        self.cnn = cap.backbone.model
        self.members = list(cap.models)  # tracked: their variables are saved
        self._decoder = cap.decoder
        self._pre = _preprocess(cap.backbone.name)
        self.size = cap.backbone.input_size
        self.max_length = max_length
        idx = cap.vocab.index
        self.end = idx[END]
        self.start = idx[START]
        self.tokens = tf.constant(list(cap.vocab.tokens))
        vsize = len(cap.vocab.tokens)
        ban = [idx[PAD], idx[START], idx[UNK]]
        self.ban = tf.constant([-float("inf") if i in ban else 0.0 for i in range(vsize)], tf.float32)
        self.caption = tf.function(self._caption, input_signature=[tf.TensorSpec([None], tf.string)])

    def _read(self, data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        image = tf.image.resize(tf.cast(image, tf.float32), [self.size, self.size], method="bicubic")
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    def _caption(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(self._read, images, fn_output_signature=tf.TensorSpec([self.size, self.size, 3], tf.uint8))
        feats = self.cnn(self._pre(pixels), training=False)
        image, h, c = self._decoder._start_impl(feats)
        n = tf.shape(images)[0]
        words = tf.fill([n], tf.constant(self.start, tf.int32))
        score = tf.zeros([n], tf.float32)
        done = tf.zeros([n], tf.bool)
        out = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None])
        end = tf.constant(self.end, tf.int32)

        def body(t, words, h, c, score, done, out):
            logp, h, c, _ = self._decoder._step_impl(image, words, h, c)
            logp = logp + self.ban
            token = tf.cast(tf.argmax(logp, axis=1), tf.int32)
            token_logp = tf.gather(logp, token, axis=1, batch_dims=1)
            last = tf.equal(t, self.max_length)
            # at max_length words a caption ends only if endseq is its most likely word, else it is cut
            take = tf.logical_and(~done, tf.logical_or(~last, tf.equal(token, end)))
            score = score + tf.where(take, token_logp, 0.0)
            token = tf.where(done, 0, token)
            out = tf.cond(last, lambda: out, lambda: out.write(tf.minimum(t, self.max_length - 1), token))
            done = tf.logical_or(done, tf.equal(token, end))
            return t + 1, token, h, c, score, done, out

        def more(t, words, h, c, score, done, out):
            return tf.logical_and(t <= self.max_length, ~tf.reduce_all(done))

        _, _, _, _, score, _, out = tf.while_loop(
            more, body, [tf.constant(0), words, h, c, score, done, out],
            shape_invariants=[tf.TensorShape([]), tf.TensorShape([None]), h.shape, c.shape, tf.TensorShape([None]),
                              tf.TensorShape([None]), tf.TensorShape(None)],
        )
        ids = tf.transpose(out.stack())  # (N, T)
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
    """Write `cap` as a SavedModel at `out` (greedy, `config.max_length` words); returns `out`."""
    config = config or cap.decoding
    exported = DecodingConfig(1, 0.0, 0, config.max_length)
    if config != exported:
        print(f"captioner export: the graph decodes greedily without n-gram blocking (asked: {config.as_dict()}); "
              f"exporting {exported.as_dict()}", file=sys.stderr)
    module = CaptionGraph(cap, config.max_length)
    _valid_variable_names([cap.backbone.model, *cap.models])
    out = Path(out)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.caption})
    (out / "decoding.json").write_text(json.dumps(exported.as_dict(), indent=1) + "\n")
    return out
