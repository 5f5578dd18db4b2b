"""Caption cleaning and the vocabulary (JSON, never pickle)."""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.runtime.io import read_json, write_json

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "END", "END_ID", "PAD", "START", "UNK", "Vocabulary", "build_vocabulary", "clean_caption",
    "clean_table", "load_vocabulary", "read_references", "save_vocabulary", "unwrap", "wrap",
]

START, END, PAD, UNK = "startseq", "endseq", "<pad>", "<unk>"
END_ID = 3  # every Vocabulary starts with PAD, UNK, START, END

_POSSESSIVE = re.compile(r"(\w)'s\b")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def clean_caption(caption: str, max_words: int | None = None) -> str:
    """Lowercase, drop possessive 's, punctuation and tokens with digits; keep "a"/"i".

    >>> clean_caption("A dog's ball, 2 cats & 1 man!")
    'a dog ball cats man'
    """
    text = _POSSESSIVE.sub(r"\1", caption.lower())
    words = [w for w in _NON_WORD.sub(" ", text).split() if w.isalpha()]
    if max_words is not None:
        words = words[:max_words]
    return " ".join(words)


def wrap(cleaned: str) -> str:
    """Wrap a cleaned caption in the start and end markers."""
    return f"{START} {cleaned} {END}" if cleaned else f"{START} {END}"


def unwrap(tokens: Sequence[str]) -> list[str]:
    """Tokens between startseq and endseq (padding and markers removed)."""
    out: list[str] = []
    for t in tokens:
        if t == END:
            break
        if t not in (START, PAD):
            out.append(t)
    return out


def read_references(text_dir: str | Path, split: str) -> dict[str, list[list[str]]]:
    """Each image's cleaned reference captions (token lists, markers removed), in caption order,
    from the clean_text table `<text_dir>/<split>.parquet`; images sorted by id."""
    import pandas as pd

    table = pd.read_parquet(Path(text_dir) / f"{split}.parquet", columns=["image_id", "caption_no", "caption"])
    table = table.sort_values(["image_id", "caption_no"])
    refs: dict[str, list[list[str]]] = {}
    for img, caption in zip(table["image_id"].astype(str), table["caption"]):
        refs.setdefault(img, []).append(unwrap(str(caption).split()))
    return refs


@dataclass(frozen=True)
class Vocabulary:
    """Token <-> id mapping: id 0 is padding, 1 unknown, then startseq, endseq, words."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.tokens[:4] != (PAD, UNK, START, END):
            raise ValueError(f"vocabulary must start with {PAD}, {UNK}, {START}, {END}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Token -> id, built once per vocabulary (callers must not modify it)."""
        return {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of a space-separated token string; unknown words map to the <unk> id."""
        idx = self.index
        return [idx.get(w, 1) for w in text.split()]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ids (all of them, markers included)."""
        return [self.tokens[i] for i in ids]


def build_vocabulary(captions: Iterable[str], min_count: int) -> Vocabulary:
    """Words seen at least `min_count` times, most frequent first (ties alphabetical)."""
    counts = Counter(w for c in captions for w in c.split() if w not in (START, END))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return Vocabulary((PAD, UNK, START, END, *words))


def save_vocabulary(path: str | Path, vocab: Vocabulary, **info: object) -> None:
    """Write the vocabulary as JSON (atomically), with any extra info."""
    write_json(path, {"tokens": list(vocab.tokens), "size": len(vocab), **info})


def load_vocabulary(path: str | Path) -> Vocabulary:
    """Read a vocabulary JSON file, naming the file on errors."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
        raise ValueError(f"{path}: not a captioner vocabulary (no 'tokens' list)")
    try:
        return Vocabulary(tuple(str(t) for t in data["tokens"]))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def clean_table(captions: pd.DataFrame, max_words: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """A data set's caption table (image_id, split, caption_no, caption) with `caption` cleaned,
    cut to `max_words` and wrapped, and the data set's own text kept as `raw_caption` (what the
    coco-caption metrics tokenise); and the counts of captions truncated and emptied by cleaning."""
    caps = captions.copy()
    caps["raw_caption"] = caps["caption"]
    cleaned = caps["caption"].map(clean_caption)
    counts = {"captions_truncated": int((cleaned.str.split().str.len() > max_words).sum()),
              "captions_empty_after_cleaning": int((cleaned == "").sum())}
    caps["caption"] = [wrap(clean_caption(c, max_words)) for c in caps["caption"]]
    return caps, counts
