"""Caption generation: batched beam search (greedy = width 1) over a compiled step function.

Calling `model.predict` once per word is far too slow in Keras 3; instead the trained
layers are run one word at a time inside one `tf.function`: embedding -> LSTM cell ->
add image -> dense -> log-softmax, for a whole batch of (image, beam) rows at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from captioner.text import END, PAD, START, UNK, Vocabulary


class StepDecoder:
    """One-word-at-a-time view of a trained merge model, or of an ensemble of them.

    An ensemble averages the members' next-word probabilities; their LSTM states and image
    vectors are concatenated side by side, so beam search sees one state of `units` columns.
    """

    def __init__(self, models: keras.Model | Sequence[keras.Model]) -> None:
        members = [models] if isinstance(models, keras.Model) else list(models)
        if not members:
            raise ValueError("StepDecoder needs at least one model")
        self._layers = [
            {name: m.get_layer(name) for name in ("image_dense", "embedding", "decoder_dense", "logits")}
            | {"cell": m.get_layer("lstm").cell}
            for m in members
        ]
        vocab_sizes = {int(la["logits"].kernel.shape[1]) for la in self._layers}
        dims = {int(la["image_dense"].kernel.shape[0]) for la in self._layers}
        if len(vocab_sizes) > 1 or len(dims) > 1:
            raise ValueError(f"ensemble members disagree: vocab sizes {vocab_sizes}, feature dims {dims}")
        self._splits = [int(la["cell"].units) for la in self._layers]
        self.units = sum(self._splits)
        dim, u = dims.pop(), self.units
        self._project = tf.function(
            self._project_impl, input_signature=[tf.TensorSpec((None, dim), tf.float32)]
        )
        self._step = tf.function(
            self._step_impl,
            input_signature=[
                tf.TensorSpec((None, u), tf.float32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None, u), tf.float32),
                tf.TensorSpec((None, u), tf.float32),
            ],
        )

    def _project_impl(self, features: tf.Tensor) -> tf.Tensor:
        return tf.concat([la["image_dense"](features) for la in self._layers], axis=1)

    def _step_impl(self, image: tf.Tensor, words: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
        logps, hs, cs = [], [], []
        parts = zip(self._layers, *(tf.split(t, self._splits, axis=1) for t in (image, h, c)))
        for la, img_i, h_i, c_i in parts:
            emb = tf.gather(la["embedding"].embeddings, words)  # no mask: one word per row
            out, (h2, c2) = la["cell"](emb, [h_i, c_i], training=False)
            logps.append(tf.nn.log_softmax(la["logits"](la["decoder_dense"](out + img_i))))
            hs.append(h2)
            cs.append(c2)
        n = float(len(logps))
        logp = logps[0] if n == 1 else tf.reduce_logsumexp(tf.stack(logps), axis=0) - tf.math.log(n)
        return logp, tf.concat(hs, axis=1), tf.concat(cs, axis=1)

    def project(self, features: np.ndarray) -> np.ndarray:
        """Image features -> the image branch's hidden vector(s)."""
        return self._project(tf.constant(features, tf.float32)).numpy()

    def step(self, image: np.ndarray, words: np.ndarray, h: np.ndarray, c: np.ndarray):
        """Log-probabilities of the next word and the new LSTM state."""
        logp, h2, c2 = self._step(image, words.astype(np.int32), h, c)
        return logp.numpy(), h2.numpy(), c2.numpy()


@dataclass(frozen=True)
class Caption:
    """A generated caption: its words and total log-probability."""

    words: list[str]
    logprob: float


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
) -> list[Caption]:
    """Decode one batch of images; width 1 is greedy. Stops at endseq or `max_length` words.

    Beams are ranked by total log-probability while searching; the final beam is chosen by
    log-probability divided by the GNMT length penalty when `length_penalty` > 0. With
    `block_repeat_ngram` = n > 0, no caption repeats an n-gram ("a man in a red shirt and a
    man in a red shirt ...").
    """
    n, k = len(features), beam_width
    idx = vocab.index
    start, end = idx[START], idx[END]
    banned = [idx[PAD], idx[START], idx[UNK]]

    image = np.repeat(decoder.project(features), k, axis=0)  # (n*k, units)
    h = np.zeros((n * k, decoder.units), np.float32)
    c = np.zeros_like(h)
    words = np.full(n * k, start, np.int32)
    scores = np.full((n, k), -np.inf, np.float32)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    seqs = np.zeros((n, k, 0), np.int32)
    done = np.zeros((n, k), bool)
    lengths = np.zeros((n, k), np.int32)

    for _ in range(max_length + 1):  # + 1 so that max_length words can still end
        logp, h, c = decoder.step(image, words, h, c)
        vsize = logp.shape[1]
        logp[:, banned] = -np.inf
        if block_repeat_ngram > 0:
            rows_b, tokens_b = repeated_ngram_bans(seqs.reshape(n * k, -1), block_repeat_ngram)
            logp[rows_b, tokens_b] = -np.inf
        logp = logp.reshape(n, k, vsize)
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
        out.append(Caption(words_i[:max_length], float(scores[i, best[i]])))
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
) -> list[Caption]:
    """Beam search over all images in batches, with a progress bar."""
    from tqdm.auto import tqdm

    out: list[Caption] = []
    with tqdm(total=len(features), desc="captioning", unit="img", disable=not progress) as bar:
        for i in range(0, len(features), batch_size):
            chunk = features[i : i + batch_size]
            out.extend(
                beam_search(decoder, chunk, vocab, beam_width, max_length, length_penalty, block_repeat_ngram)
            )
            bar.update(len(chunk))
    return out


def caption_texts(captions: Sequence[Caption]) -> list[str]:
    """Space-joined words of each caption."""
    return [" ".join(c.words) for c in captions]
