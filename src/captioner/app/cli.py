"""The `captioner` command: caption your own photos with the pipeline's trained model.

    captioner caption photo.jpg holiday/ 'shots/*.png' --json
    captioner caption photo.jpg --attention-map maps/    # attention models: where each word looked
    captioner serve --port 8000                          # HTTP service + demo page (captioner.app.serve)
    captioner export exported/                           # SavedModel: JPEG bytes -> caption (captioner.app.export)

The model folder is --model, else $CAPTIONER_MODEL, else data/release if it exists, else
data/model. Captions are decoded with the folder's decoding.json (the settings its evaluation
used; evaluate defaults without one); --beam, --length-penalty, --no-repeat-ngram,
--max-length, --rerank and --consensus-weights override single settings.

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
from pathlib import Path

from captioner import __version__
from captioner.config.decoding import DecodingConfig
from captioner.model.folder import DECODING_FILE, MODEL_ENV, ModelError, check_model_files, default_model_dir, read_decoding

__all__ = ["DecodingConfig", "ModelError", "expand_inputs", "main"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GLOB_CHARS = "*?["


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


class _Reporter:
    """Where problems go: `captioner: <message>` lines on stderr, or with --json one JSON line
    each on stderr in the service's problem shape (captioner.app.problems: type, title, status,
    detail) plus "image" (null for a problem with no image); stdout keeps the captions only."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, message: str, image: str | os.PathLike[str] | None = None, kind: str = "undecodable") -> None:
        if self.as_json:
            from captioner.app.problems import problem

            print(json.dumps(problem(kind, message, image=None if image is None else str(image)),
                             ensure_ascii=False), file=sys.stderr, flush=True)
        else:
            print(f"captioner: {f'{image}: ' if image is not None else ''}{message}", file=sys.stderr)


def decoding_overrides(args: argparse.Namespace) -> dict[str, int | float | str | None]:
    """The decoding flags given on the command line (None: not given, use decoding.json)."""
    return {"beam_width": args.beam, "length_penalty": args.length_penalty,
            "block_repeat_ngram": args.no_repeat_ngram, "max_length": args.max_length, "rerank": args.rerank,
            "consensus_weights": args.consensus_weights}


def _caption(args: argparse.Namespace) -> int:
    report = _Reporter(args.json)
    model = args.model or default_model_dir()
    maps = Path(args.attention_map) if args.attention_map else None
    # Everything that needs no TensorFlow is checked first: bad inputs fail in milliseconds.
    paths, unmatched = expand_inputs(args.images, skip=[maps] if maps else [])
    for item in unmatched:
        report(unmatched_reason(item), item, "no_match")
    if not paths:
        report("no images to caption", kind="no_images")
        return 2
    try:
        check_model_files(model)
        config = read_decoding(model).overridden(**decoding_overrides(args))
        from captioner.decoding.captioner import load_captioner  # TensorFlow loads once the files are there

        cap = load_captioner(model)
        cap.check(config)
    except (ModelError, ValueError) as e:
        report(str(e), kind="bad_model")
        return 2

    import numpy as np

    from captioner.features.extract import extract

    if maps is not None and not cap.attends:
        report(f"{model}: a merge model has no attention to show; --attention-map needs a model "
               "trained with model.kind: attention", kind="bad_request")
        return 2

    progress = sys.stderr.isatty() and not args.json
    extraction = extract(paths, cap.backbone, args.batch_size, args.workers, progress, on_error="skip")
    for path, reason in extraction.errors:
        report(reason, path)
    ok = [p for p, good in zip(paths, extraction.ok_mask) if good]
    if cap.dataset == "scenes":
        from captioner.datasets.scenes import is_scene_image

        if not all(is_scene_image(p) for p in ok):
            print(f"captioner: warning: {model} was trained on the generated scenes (coloured shapes, a "
                  "toy data set): its captions of other images mean little; train on Flickr8k "
                  "(`make flickr8k`) for real photos", file=sys.stderr)
    failed = bool(extraction.errors or unmatched)
    if ok:
        feats = np.asarray(extraction.features[extraction.ok_mask], np.float32)
        captions = cap.caption_features(feats, config, args.batch_size, progress, attention=maps is not None)
        taken: set[Path] = set()
        for path, c in zip(ok, captions):
            out = None
            if maps is not None:
                out = map_path(maps, path, taken)
                try:
                    save_attention_map(out, path, cap.backbone.input_size, c.words, c.attention)
                except OSError as e:  # the caption is still printed; the exit status says it
                    report(f"cannot write the attention map ({e.strerror or e})", out, "write_failed")
                    out, failed = None, True
            print(caption_line(path, c.words, c.logprob, args.json, out), flush=True)
    return 1 if failed else 0


def _serve(args: argparse.Namespace) -> int:
    from captioner.app.serve import ServeSettings, read_api_keys, run

    model = args.model or default_model_dir()
    try:
        check_model_files(model)  # before the port opens: a bad folder is a one-line error
        config = read_decoding(model).overridden(**decoding_overrides(args))
        settings = ServeSettings(
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=int(args.max_pixels * 1e6),
            max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
            max_images=args.max_images, drain_seconds=args.drain_seconds,
            api_keys=read_api_keys(os.environ.get("CAPTIONER_API_KEYS"), args.api_keys_file),
            cors_origins=tuple(args.cors_origin or ()),
        )
        return run(model, config, settings, args.host, args.port, args.log_level)
    except (ModelError, ValueError) as e:
        print(f"captioner: {e}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> int:
    from captioner.app.export import export_savedmodel
    from captioner.decoding.captioner import load_captioner

    model = args.model or default_model_dir()
    try:
        config = read_decoding(model).overridden(**decoding_overrides(args))
        out = export_savedmodel(load_captioner(model), args.out, config, serving=args.tf_serving)
    except (ModelError, ValueError) as e:
        print(f"captioner: {e}", file=sys.stderr)
        return 2
    print(f"captioner: exported {model} -> {out}")
    if args.tf_serving:
        print(f"captioner: serve it with: tensorflow_model_server --rest_api_port=8501 "
              f"--model_name={args.tf_serving} --model_base_path={out.parent.resolve()}")
    return 0


def save_attention_map(out: Path, image: Path, size: int, words: Sequence[str], weights) -> None:
    """Render and write one attention sheet (atomically) for `image` as the CNN saw it."""
    from captioner.evaluation.attention_map import render_attention
    from captioner.features.images import read_image
    from captioner.runtime.io import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    sheet = render_attention(read_image(image, size).pixels, words, weights)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")


def _number(name: str, kind: type, low: float, inclusive: bool):
    """An argparse type `name`: `kind(text)`, at least `low` (or above it when not `inclusive`)."""
    def parse(text: str):
        value = kind(text)
        if not (value >= low if inclusive else value > low):  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'above'} {low:g}, got {text}")
        return value
    parse.__name__ = name  # argparse names it in "invalid <name> value"
    return parse


positive_int = _number("positive_int", int, 1, inclusive=True)
non_negative_int = _number("non_negative_int", int, 0, inclusive=True)
non_negative_float = _number("non_negative_float", float, 0.0, inclusive=True)
positive_float = _number("positive_float", float, 0.0, inclusive=False)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """--model and the decoding flags (each overrides the model folder's decoding.json)."""
    p.add_argument("--model", default=None, help=f"trained model folder (default: ${MODEL_ENV}, else data/release "
                   "if it exists, else data/model)")
    defaults = ", ".join(f"{k} {v}" for k, v in DecodingConfig().as_dict().items())
    g = p.add_argument_group("decoding", f"default: the model folder's {DECODING_FILE} (the settings its evaluation "
                             f"used), else {defaults}")
    g.add_argument("--beam", type=positive_int, help="beam width; 1 = greedy")
    g.add_argument("--length-penalty", type=non_negative_float, help="GNMT length penalty alpha; 0 = off")
    g.add_argument("--no-repeat-ngram", type=non_negative_int, metavar="N",
                   help="never repeat an n-gram of N words; 0 = off")
    g.add_argument("--max-length", type=positive_int, help="words at most")
    g.add_argument("--rerank", choices=["beam", "consensus"],
                   help="keep the most likely of the beam's candidates (beam) or the one they agree with most "
                        "(consensus: expected CIDEr-D, needs --beam > 1; not in export)")
    g.add_argument("--consensus-weights", choices=["uniform", "probability"],
                   help="consensus: weigh the other candidates equally or by their probability")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="captioner", description="Image captioning with a DVC-trained model.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    cap = sub.add_parser(
        "caption", help="print a caption for each image",
        description="Caption images: one `path<TAB>caption` line each (or JSON lines with --json). "
        "Unreadable images are reported on stderr (with --json as RFC 9457 problem objects plus \"image\", one a line) "
        "and the others are still captioned.",
    )
    cap.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    add_model_flags(cap)
    for flag, default, what in (
        ("--batch-size", 32, "images per batch"),
        ("--workers", 1, "image-decoding threads"),
    ):
        cap.add_argument(flag, type=positive_int, default=default, help=f"{what} (default: %(default)s)")
    cap.add_argument("--json", action="store_true",
                     help='JSON lines: {"image", "caption", "score"} on stdout; problems on stderr as '
                     '{"type", "title", "status", "detail", "image"}')
    cap.add_argument(
        "--attention-map", metavar="DIR",
        help="attention models: write DIR/<image>.attention.png, one panel per word lit where the model looked",
    )
    cap.set_defaults(func=_caption)

    srv = sub.add_parser("serve", help="an HTTP captioning service with a demo page",
                         description="Serve POST /caption and /captions, GET /healthz, /readyz, /metrics, the API "
                         "at /docs and a demo page at / (model loaded once). API keys: $CAPTIONER_API_KEYS "
                         "(comma-separated) and/or --api-keys-file; then requests need `Authorization: Bearer <key>`.")
    add_model_flags(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    srv.add_argument("--port", type=int, default=8000, help="(default: %(default)s; 0 = any free port)")
    srv.add_argument("--max-upload-mb", type=positive_float, default=10.0, help="largest upload (default: %(default)s)")
    srv.add_argument("--max-pixels", type=positive_float, default=40.0,
                     help="largest image, in megapixels (default: %(default)s)")
    srv.add_argument("--max-batch", type=positive_int, default=8,
                     help="concurrent requests captioned together (default: %(default)s; 1 = no batching)")
    srv.add_argument("--batch-wait-ms", type=non_negative_float, default=2.0,
                     help="how long a batch waits for more requests (default: %(default)s)")
    srv.add_argument("--max-queue", type=positive_int, default=64,
                     help="images waiting at most; more get 503 (default: %(default)s)")
    srv.add_argument("--max-images", type=positive_int, default=16,
                     help="images in one POST /captions at most (default: %(default)s)")
    srv.add_argument("--api-keys-file", metavar="FILE", help="API keys, one a line (with or instead of "
                     "$CAPTIONER_API_KEYS); without keys the service is open to anyone who reaches it")
    srv.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                     help="allow browser calls from this origin, e.g. https://app.example.com (repeatable; "
                     "default: no CORS)")
    srv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                     help="server and access-log level (default: %(default)s; info logs one line per request)")
    srv.add_argument("--drain-seconds", type=non_negative_float, default=30.0,
                     help="on SIGTERM, time given to requests already accepted (default: %(default)s)")
    srv.set_defaults(func=_serve)

    exp = sub.add_parser("export", help="write a self-contained TensorFlow SavedModel (JPEG bytes -> caption)")
    add_model_flags(exp)
    exp.add_argument("out", help="SavedModel folder to write (with --tf-serving: the models' base folder)")
    exp.add_argument("--tf-serving", metavar="NAME",
                     help="write TF Serving's layout, OUT/NAME/<next version>/ (1, 2, ...)")
    exp.set_defaults(func=_export)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
