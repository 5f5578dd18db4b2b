"""The model folder: the contract between training and every consumer (evaluate, package, the
CLI, the service, the export, the benchmarks). This module alone names its files and the
fields of its `meta.json`; everything else saves and loads through it.

A folder holds the ensemble members (``model.keras``, ``model_1.keras``, ...), ``vocab.json``
and ``meta.json``; the `scst` stage's (`data/model`) also ``ngrams.npz``, the train captions'
n-gram document frequencies that consensus reranking scores with; a release (`data/release/`, the `package` stage) adds ``decoding.json`` (the
settings the evaluation decoded with, captioner.config.decoding) and ``README.md`` (the model
card). Consumers decode with the folder's decoding.json, else with the pipeline's defaults.

meta.json, as `train` writes it: ``backbone``, ``weights``, ``feature_dim``, ``vocab_size``,
``members`` (file names), ``kind`` (merge | attention), ``member_kinds``, ``spatial``
(pooled | grid), ``best_epoch`` and ``best_val_loss`` (member 0's); `scst` adds ``scst``
(epochs cap, epochs run, the best epoch); a release adds ``dataset``.

Importing this module is cheap: Keras loads only when models are saved or loaded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.config.decoding import DecodingConfig
from captioner.datasets.text import Vocabulary, load_vocabulary, save_vocabulary
from captioner.runtime.io import atomic_path, read_json, write_json

if TYPE_CHECKING:
    import keras

__all__ = [
    "CARD_FILE", "DECODING_FILE", "META_FILE", "MODEL_ENV", "NGRAMS_FILE", "RELEASE_DIR", "TRAINED_DIR", "VOCAB_FILE",
    "ModelError", "ModelFolder", "check_model_files", "copy_model_folder", "default_model_dir", "member_name",
    "model_meta", "read_decoding", "save_model_folder", "write_decoding", "write_release",
]

META_FILE, VOCAB_FILE, DECODING_FILE, CARD_FILE = "meta.json", "vocab.json", "decoding.json", "README.md"
NGRAMS_FILE = "ngrams.npz"  # the train captions' n-gram document frequencies (consensus reranking)
MODEL_ENV = "CAPTIONER_MODEL"
RELEASE_DIR, TRAINED_DIR = "data/release", "data/model"


class ModelError(Exception):
    """A model folder is missing or inconsistent; the message names the file and the fix."""


def member_name(i: int) -> str:
    """File name of ensemble member `i`: ``model.keras``, then ``model_1.keras``, ..."""
    return "model.keras" if i == 0 else f"model_{i}.keras"


def default_model_dir() -> str:
    """`$CAPTIONER_MODEL`, else data/release if it exists, else data/model."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    return RELEASE_DIR if Path(RELEASE_DIR).is_dir() else TRAINED_DIR


def model_meta(*, backbone: str | None, weights: str | None, feature_dim: int, vocab_size: int,
               member_kinds: Sequence[str], grid: bool, best_epoch: int, best_val_loss: float) -> dict[str, Any]:
    """meta.json of a freshly trained folder (kind: the first member's)."""
    return {
        "backbone": backbone, "weights": weights, "feature_dim": feature_dim, "vocab_size": vocab_size,
        "members": [member_name(i) for i in range(len(member_kinds))], "kind": member_kinds[0],
        "member_kinds": list(member_kinds), "spatial": "grid" if grid else "pooled",
        "best_epoch": best_epoch, "best_val_loss": best_val_loss,
    }


def _plain_file_name(name: object) -> bool:
    """A bare name inside the folder: no separator, not absolute, not `.` or `..`, no NUL."""
    return (
        isinstance(name, str) and name not in ("", ".", "..")
        and not any(c in name for c in ("/", "\\", "\0"))
    )


def member_files(meta: Mapping[str, Any], source: str | os.PathLike[str] = META_FILE) -> list[str]:
    """File names of a folder's ensemble members (meta.json "members"; one model by default).

    Only plain file names are accepted, so a meta.json (named `source` in errors) cannot make
    the loader read a model from outside its folder.
    """
    members = meta.get("members", [member_name(0)])
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ValueError(f"{source}: 'members' must be a non-empty list of file names, got {members!r}")
    bad = [m for m in members if not _plain_file_name(m)]
    if bad:
        raise ValueError(
            f"{source}: 'members' must be plain file names in the model folder (no folders, "
            f"'..' or absolute paths), got {bad!r}"
        )
    return members


def check_model_files(folder: str | os.PathLike[str]) -> None:
    """Raise ModelError unless `folder` has its first member, vocab.json and meta.json (no Keras)."""
    folder = Path(folder)
    missing = [str(folder / n) for n in (member_name(0), VOCAB_FILE, META_FILE) if not (folder / n).is_file()]
    if missing:
        raise ModelError(
            f"no trained model at {folder} (missing {', '.join(missing)}); "
            "run `make repro` (or `dvc repro`, or `dvc pull` for a shared one) first, "
            f"or pass --model DIR (or set {MODEL_ENV})"
        )


def read_decoding(folder: str | os.PathLike[str]) -> DecodingConfig:
    """The folder's decoding.json, or the defaults when it has none; ModelError when it is
    unreadable or invalid."""
    path = Path(folder) / DECODING_FILE
    if not path.is_file():
        return DecodingConfig()
    try:
        return DecodingConfig.from_mapping(read_json(path), str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: cannot read the decoding settings ({e})") from None
    except ValueError as e:  # not JSON, or DecodingError
        raise ModelError(str(e)) from None


def write_decoding(folder: str | os.PathLike[str], config: DecodingConfig) -> Path:
    """Write `config` as the folder's decoding.json (atomically); returns its path."""
    path = Path(folder) / DECODING_FILE
    write_json(path, config.as_dict())
    return path


@dataclass(frozen=True)
class ModelFolder:
    """A model folder on disk: its meta.json read and checked; vocabulary and models on demand."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> ModelFolder:
        """Check the files and read meta.json; ModelError naming the file otherwise."""
        path = Path(folder)
        check_model_files(path)
        try:
            meta = read_json(path / META_FILE)
        except (OSError, ValueError) as e:
            raise ModelError(str(e)) from None
        if not isinstance(meta, dict):
            raise ModelError(f"{path / META_FILE}: expected a JSON object")
        return cls(path, meta)

    @property
    def members(self) -> list[str]:
        return member_files(self.meta, self.path / META_FILE)

    @property
    def feature_dim(self) -> int:
        return int(self._entry("feature_dim"))

    @property
    def backbone(self) -> str:
        return str(self._entry("backbone"))

    @property
    def weights(self) -> str:
        return str(self.meta.get("weights") or "imagenet")

    @property
    def spatial(self) -> str:
        return str(self.meta.get("spatial") or "pooled")  # grid: an attention model

    @property
    def dataset(self) -> str | None:
        return self.meta.get("dataset")  # in a release: "scenes" (a toy), "flickr8k", ...

    def _entry(self, key: str) -> Any:
        try:
            return self.meta[key]
        except KeyError:
            raise ModelError(f"{self.path / META_FILE}: missing entry {key!r}") from None

    def vocabulary(self) -> Vocabulary:
        return load_vocabulary(self.path / VOCAB_FILE)

    def decoding(self) -> DecodingConfig:
        return read_decoding(self.path)

    def load_models(self, feature_dim: int | None = None, vocab_size: int | None = None) -> list[keras.Model]:
        """Every member, each checked against the features and vocabulary it will get
        (ValueError naming the file on a mismatch)."""
        from captioner.model.build import load_model

        return [load_model(str(self.path / name), feature_dim, vocab_size) for name in self.members]


def save_model_folder(out: str | os.PathLike[str], models: Sequence[keras.Model], vocab: Vocabulary,
                      meta: Mapping[str, Any]) -> None:
    """Write a model folder atomically: the members under meta["members"], vocab.json, meta.json."""
    names = member_files(meta)
    if len(names) != len(models):
        raise ValueError(f"{len(models)} models for the {len(names)} members named in meta.json")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name, model in zip(names, models):
            model.save(tmp / name)
        save_vocabulary(tmp / VOCAB_FILE, vocab)
        write_json(tmp / META_FILE, dict(meta))


def copy_model_folder(src: str | os.PathLike[str], out: str | os.PathLike[str],
                      models: Sequence[keras.Model] | None = None, meta: Mapping[str, Any] | None = None,
                      add: Callable[[Path], None] | None = None) -> None:
    """Copy a model folder atomically; with `models`, their weights replace the members' files
    (same names), and `meta` (default: the source's) is written as meta.json; `add(folder)`
    writes more files into the copy before it appears (e.g. NGRAMS_FILE)."""
    src = Path(src)
    with atomic_path(out) as tmp:
        if models is None and meta is None:
            shutil.copytree(src, tmp)
        else:
            source = ModelFolder.open(src)
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(*source.members))
            if models is not None:
                for name, model in zip(source.members, models, strict=True):
                    model.save(tmp / name)
            write_json(tmp / META_FILE, dict(meta if meta is not None else source.meta))
        if add is not None:
            add(tmp)


def write_release(model_dir: str | os.PathLike[str], out: str | os.PathLike[str], decoding: DecodingConfig,
                  card: str, dataset: str) -> list[str]:
    """The release folder, atomically: the model's members, vocab.json and its n-gram document
    frequencies when it has them (copied: DVC stores identical files once), meta.json with the data set, decoding.json and the model card.
    Returns the names of the files in it."""
    source = ModelFolder.open(model_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name in [*source.members, VOCAB_FILE, NGRAMS_FILE]:
            if name != NGRAMS_FILE or (source.path / name).is_file():  # n-grams: made by the scst stage
                shutil.copy2(source.path / name, tmp / name)
        write_json(tmp / META_FILE, {**source.meta, "dataset": dataset})
        write_decoding(tmp, decoding)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        names = sorted(p.name for p in tmp.iterdir())
    return names
