"""Caption search over a model's next-word distribution: batched beam search (width 1 =
greedy) with a GNMT length penalty, n-gram blocking and optional consensus reranking, over
captioner.model.step's public `StepDecoder.start`/`step`; `generate_captions` runs it over many
images with one `DecodingConfig` (captioner.config.decoding), `decode_folder` straight from a
model folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from captioner.config.decoding import DecodingConfig, DecodingError
from captioner.datasets.text import END, PAD, START, UNK, Vocabulary
from captioner.decoding.cider import CiderD
from captioner.decoding.consensus import Consensus
from captioner.model.folder import NGRAMS_FILE, ModelError, ModelFolder
from captioner.model.step import StepDecoder

__all__ = ["Caption", "beam_search", "caption_texts", "decode_folder", "generate_captions", "load_ngrams",
           "repeated_ngram_bans"]


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
    consensus: Consensus | None = None,
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
    the attention weights of its words. With `consensus`, the final beam is the one it chooses
    among the `beam_width` candidates (captioner.decoding.consensus) instead of the most likely.
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
    if consensus is not None and k > 1:
        words_of = [[[vocab.tokens[t] for t in row if t not in (0, end)] for row in seqs[i].tolist()] for i in range(n)]
        best = consensus.choose(words_of, final)
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
    config: DecodingConfig,
    batch_size: int = 256,
    progress: bool = True,
    attention: bool = False,
    ngrams: CiderD | None = None,
) -> list[Caption]:
    """Beam search as `config` says over all images, in batches of `batch_size`, with a
    progress bar. Consensus reranking (`config.rerank`) scores with `ngrams`, the train
    captions' document frequencies (:func:`load_ngrams`)."""
    from tqdm.auto import tqdm

    consensus = None
    if config.rerank == "consensus":
        if ngrams is None:
            raise DecodingError("rerank: consensus needs the train captions' n-gram document frequencies "
                                f"({NGRAMS_FILE} in the model folder), and none were given")
        consensus = Consensus(ngrams, config.consensus_weights)
    out: list[Caption] = []
    with tqdm(total=len(features), desc="captioning", unit="img", disable=not progress) as bar:
        for i in range(0, len(features), batch_size):
            chunk = features[i : i + batch_size]
            out.extend(beam_search(decoder, chunk, vocab, config.beam_width, config.max_length,
                                   config.length_penalty, config.block_repeat_ngram, attention, consensus))
            bar.update(len(chunk))
    return out


def caption_texts(captions: Sequence[Caption]) -> list[str]:
    """Space-joined words of each caption."""
    return [" ".join(c.words) for c in captions]


def load_ngrams(folder: ModelFolder) -> CiderD:
    """The folder's n-gram document frequencies (consensus reranking scores with them);
    ModelError naming the file when it is missing or unreadable."""
    path = folder.path / NGRAMS_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; consensus reranking needs the train captions' n-gram document "
                         "frequencies, which the scst stage writes (retrain, or decode with rerank: beam)")
    try:
        return CiderD.load(path)
    except ValueError as e:
        raise ModelError(str(e)) from None


def decode_folder(model_dir: str | Path, features: np.ndarray, config: DecodingConfig, batch_size: int,
                  progress: bool = False) -> list[Caption]:
    """Load a model folder's members (no backbone) and caption feature rows with `config`."""
    folder = ModelFolder.open(model_dir)
    vocab = folder.vocabulary()
    ngrams = load_ngrams(folder) if config.rerank == "consensus" else None
    models = folder.load_models(features.shape[1], len(vocab))
    return generate_captions(StepDecoder(models), features, vocab, config, batch_size, progress=progress,
                             ngrams=ngrams)

