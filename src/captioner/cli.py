"""The `captioner` command: caption your own photos with the pipeline's trained model.

    captioner caption photo.jpg holiday/ 'shots/*.png' --beam 3 --json
    captioner caption photo.jpg --attention-map maps/    # attention models: where each word looked

Folders are searched recursively for images, skipping hidden files and folders (``.name``)
and the ``--attention-map`` folder; a file named explicitly is always tried.

Exit status: 0 all images captioned; 1 some inputs were missing, unreadable, matched nothing
or their attention map could not be written (the others are still captioned); 2 nothing to
caption, or the model folder is missing or inconsistent (no model, vocabulary/model
mismatch, backbone/feature mismatch).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

    from captioner.backbones import Backbone
    from captioner.text import Vocabulary

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GLOB_CHARS = "*?["
MODEL_FILES = ("model.keras", "vocab.json", "meta.json")


class ModelError(Exception):
    """A model folder is missing or inconsistent; the message names the file and the fix."""


@dataclass(frozen=True)
class Captioner:
    """A trained model folder, loaded and checked: model, its vocabulary and its CNN backbone."""

    models: list[keras.Model]  # one, or the members of an ensemble
    vocab: Vocabulary
    backbone: Backbone


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _folder_images(folder: Path, skip: set[Path]) -> list[Path]:
    """Images under `folder` (sorted), not descending into hidden folders or those in `skip`
    (resolved paths) and leaving out hidden files."""
    found: list[Path] = []
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and Path(dirpath, d).resolve() not in skip]
        found += [f for name in files if not name.startswith(".") and _is_image(f := Path(dirpath, name))]
    return sorted(found)


def expand_inputs(items: Sequence[str], skip: Sequence[Path] = ()) -> tuple[list[Path], list[str]]:
    """Files, folders and globs -> image paths (in order, without repeats), plus inputs that matched nothing.

    A file named explicitly is always kept (it is reported later if it is not an image);
    folders (recursively, without hidden files and folders or the folders in `skip`) and globs
    keep files with an image suffix, sorted. A path without glob characters is never globbed.
    """
    skipped = {Path(s).resolve() for s in skip}
    paths: dict[Path, None] = {}
    unmatched: list[str] = []
    for item in items:
        p = Path(os.path.expanduser(item))
        if p.is_dir():
            found = _folder_images(p, skipped)
        elif p.exists():
            found = [p]
        elif any(c in item for c in GLOB_CHARS):
            found = sorted(f for f in map(Path, glob.glob(str(p), recursive=True)) if _is_image(f))
        else:
            found = []
        if not found:
            unmatched.append(item)
        paths.update(dict.fromkeys(found))
    return list(paths), unmatched


def unmatched_reason(item: str) -> str:
    """Why an input of `expand_inputs` gave no image."""
    p = Path(os.path.expanduser(item))
    if p.is_dir():
        return "no images in this folder"
    if not p.exists() and any(c in item for c in GLOB_CHARS):
        return "no image matches this pattern"
    return "no such file or folder"


def load_captioner(model_dir: str | os.PathLike[str]) -> Captioner:
    """Load model.keras, vocab.json and meta.json from `model_dir` and the backbone meta.json names.

    Raises ModelError for a missing folder or file, unreadable JSON, a vocabulary that does not
    match the model, or a backbone whose features do not match what the model expects.
    """
    folder = Path(model_dir)
    missing = [str(folder / n) for n in MODEL_FILES if not (folder / n).is_file()]
    if missing:
        raise ModelError(
            f"no trained model at {folder} (missing {', '.join(missing)}); "
            "run `make repro` (or `dvc repro`, or `dvc pull` for a shared one) first, or pass --model DIR"
        )
    from captioner.backbones import load_backbone  # TensorFlow loads only once a model is there
    from captioner.io import read_json
    from captioner.model import load_members
    from captioner.text import load_vocabulary

    try:
        meta: dict[str, Any] = read_json(folder / "meta.json")
        vocab = load_vocabulary(folder / "vocab.json")
        backbone_name, feature_dim = str(meta["backbone"]), int(meta["feature_dim"])
        models = load_members(folder, meta, feature_dim, len(vocab))
    except (KeyError, TypeError) as e:
        raise ModelError(f"{folder / 'meta.json'}: missing or bad entry {e}") from None
    except ValueError as e:
        raise ModelError(str(e)) from None
    try:
        spatial = str(meta.get("spatial") or "pooled")  # grid: an attention model
        backbone = load_backbone(backbone_name, str(meta.get("weights") or "imagenet"), spatial)
    except (ValueError, FileNotFoundError) as e:
        raise ModelError(f"{folder / 'meta.json'}: {e}") from None
    if backbone.feature_dim != feature_dim:
        raise ModelError(
            f"{folder / 'meta.json'}: the model expects {feature_dim}-d features but backbone "
            f"{backbone_name} gives {backbone.feature_dim}-d"
        )
    return Captioner(models, vocab, backbone)


def caption_line(
    path: Path, words: Sequence[str], score: float, as_json: bool, attention_map: Path | None = None
) -> str:
    """One output line: `path<TAB>caption`, or a JSON object {image, caption, score[, attention_map]}."""
    text = " ".join(words)
    if as_json:
        extra = {"attention_map": str(attention_map)} if attention_map else {}
        return json.dumps(
            {"image": str(path), "caption": text, "score": round(score, 4), **extra}, ensure_ascii=False
        )
    return f"{path}\t{text}"


def map_path(folder: Path, image: Path, taken: set[Path]) -> Path:
    """`folder/<image stem>.attention.png`, numbered when two inputs share a stem."""
    out, n = folder / f"{image.stem}.attention.png", 1
    while out in taken:
        out, n = folder / f"{image.stem}-{n}.attention.png", n + 1
    taken.add(out)
    return out


def _error(message: str) -> None:
    print(f"captioner: {message}", file=sys.stderr)


def _caption(args: argparse.Namespace) -> int:
    maps = Path(args.attention_map) if args.attention_map else None
    paths, unmatched = expand_inputs(args.images, skip=[maps] if maps else [])
    for item in unmatched:
        _error(f"{item}: {unmatched_reason(item)}")
    try:
        cap = load_captioner(args.model)
    except ModelError as e:
        _error(str(e))
        return 2
    if not paths:
        _error("no images to caption")
        return 2

    import numpy as np

    from captioner.decoding import StepDecoder, generate_captions
    from captioner.features import extract

    decoder = StepDecoder(cap.models)
    if maps is not None and not decoder.regions:
        _error(f"{args.model}: a merge model has no attention to show; --attention-map needs a model "
               "trained with model.kind: attention")
        return 2

    progress = sys.stderr.isatty()
    extraction = extract(paths, cap.backbone, args.batch_size, args.workers, progress, on_error="skip")
    for path, reason in extraction.errors:
        _error(f"{path}: {reason}")
    ok = [p for p, good in zip(paths, extraction.ok_mask) if good]
    failed = bool(extraction.errors or unmatched)
    if ok:
        feats = np.asarray(extraction.features[extraction.ok_mask], np.float32)
        captions = generate_captions(
            decoder, feats, cap.vocab, args.beam, args.max_length, 0.0, args.batch_size, progress,
            attention=maps is not None,
        )
        taken: set[Path] = set()
        for path, c in zip(ok, captions):
            out = None
            if maps is not None:
                out = map_path(maps, path, taken)
                try:
                    save_attention_map(out, path, cap.backbone.input_size, c.words, c.attention)
                except OSError as e:  # the caption is still printed; the exit status says it
                    _error(f"{out}: cannot write the attention map ({e.strerror or e})")
                    out, failed = None, True
            print(caption_line(path, c.words, c.logprob, args.json, out), flush=True)
    return 1 if failed else 0


def save_attention_map(out: Path, image: Path, size: int, words: Sequence[str], weights) -> None:
    """Render and write one attention sheet (atomically) for `image` as the CNN saw it."""
    from captioner.attention_map import render_attention
    from captioner.images import read_image
    from captioner.io import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    sheet = render_attention(read_image(image, size).pixels, words, weights)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="captioner", description="Image captioning with a DVC-trained model.")
    sub = ap.add_subparsers(dest="command", required=True)
    cap = sub.add_parser(
        "caption", help="print a caption for each image",
        description="Caption images: one `path<TAB>caption` line each (or JSON lines with --json). "
        "Unreadable images are reported on stderr and the others are still captioned.",
    )
    cap.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    cap.add_argument("--model", default="data/model", help="trained model folder (default: %(default)s)")
    for flag, default, what in (
        ("--beam", 3, "beam width; 1 = greedy"),
        ("--max-length", 40, "words at most"),
        ("--batch-size", 32, "images per batch"),
        ("--workers", 1, "image-decoding threads"),
    ):
        cap.add_argument(flag, type=positive_int, default=default, help=f"{what} (default: %(default)s)")
    cap.add_argument("--json", action="store_true", help='JSON lines: {"image", "caption", "score"}')
    cap.add_argument(
        "--attention-map", metavar="DIR",
        help="attention models: write DIR/<image>.attention.png, one panel per word lit where the model looked",
    )
    cap.set_defaults(func=_caption)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
