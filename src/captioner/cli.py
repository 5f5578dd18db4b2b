"""The `captioner` command: caption your own photos with the pipeline's trained model.

    captioner caption photo.jpg holiday/ 'shots/*.png' --beam 3 --json
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def expand_inputs(items: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their images, sorted) and globs -> image paths, plus inputs that matched nothing."""
    paths: list[Path] = []
    unmatched: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            found = [p]
        else:
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
        if not found:
            unmatched.append(item)
        paths.extend(found)
    return paths, unmatched


def _caption(args: argparse.Namespace) -> int:
    from captioner.io import read_json

    model_dir = Path(args.model)
    needed = [model_dir / n for n in ("model.keras", "vocab.json", "meta.json")]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(
            f"captioner: no trained model at {model_dir} (missing {', '.join(missing)}); "
            "run `make repro` (or `dvc repro`) first, or pass --model DIR",
            file=sys.stderr,
        )
        return 2
    paths, unmatched = expand_inputs(args.images)
    for item in unmatched:
        print(f"captioner: {item}: no such file, folder or matching image", file=sys.stderr)
    if not paths:
        return 2

    import numpy as np

    from captioner.backbones import load_backbone
    from captioner.decoding import StepDecoder, generate_captions
    from captioner.features import extract
    from captioner.model import load_model
    from captioner.text import load_vocabulary

    meta = read_json(model_dir / "meta.json")
    vocab = load_vocabulary(model_dir / "vocab.json")
    try:
        model = load_model(str(model_dir / "model.keras"), int(meta["feature_dim"]), len(vocab))
    except ValueError as e:
        print(f"captioner: {e}", file=sys.stderr)
        return 2
    backbone = load_backbone(meta["backbone"], meta.get("weights") or "imagenet")
    extraction = extract(
        paths, backbone, batch_size=args.batch_size, workers=2, progress=False, on_error="skip"
    )
    for path, reason in extraction.errors:
        print(f"captioner: {path}: {reason}", file=sys.stderr)
    ok = [p for p, good in zip(paths, extraction.ok_mask) if good]
    feats = np.asarray(extraction.features[extraction.ok_mask], np.float32)
    captions = generate_captions(
        StepDecoder(model), feats, vocab, args.beam, args.max_length, 0.0, 64, progress=False
    ) if len(ok) else []
    for path, cap in zip(ok, captions):
        text = " ".join(cap.words)
        if args.json:
            print(json.dumps({"image": str(path), "caption": text, "score": round(cap.logprob, 4)}))
        else:
            print(f"{path}\t{text}")
    return 1 if extraction.errors or unmatched else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="captioner", description="Image captioning with a DVC-trained merge model.")
    sub = ap.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("caption", help="print a caption for each image")
    cap.add_argument("images", nargs="+", help="image files, folders or globs")
    cap.add_argument("--model", default="data/model", help="trained model folder (default: %(default)s)")
    cap.add_argument("--beam", type=int, default=3, help="beam width; 1 = greedy (default: %(default)s)")
    cap.add_argument("--max-length", type=int, default=40, help="words at most (default: %(default)s)")
    cap.add_argument("--batch-size", type=int, default=32)
    cap.add_argument("--json", action="store_true", help="one JSON object per line")
    cap.set_defaults(func=_caption)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "beam", 1) < 1:
        print("captioner: --beam must be at least 1", file=sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
