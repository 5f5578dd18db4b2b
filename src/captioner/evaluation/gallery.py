"""A self-contained HTML gallery of evaluation captions.

For a deterministic sample of evaluation images it shows the image, the generated caption,
the reference captions, the per-image CIDEr-D (coco-caption) and the smoothed sentence BLEU-4:
the best examples by CIDEr-D first (by BLEU-4 for a table without CIDEr-D), then the worst,
then a random sample of the rest. Images are embedded as downscaled
JPEG ``data:`` URIs and a Content-Security-Policy forbids any other source, so the single
file opens offline, can be mailed or moved, and never fetches anything.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from captioner.features.images import DECODE_ERRORS, ImageError, decode, to_rgb
from captioner.runtime.io import atomic_path

__all__ = [
    "GROUPS", "SCORE_NAMES", "bleu_rows", "coco_rows", "embed_images", "image_paths", "render_gallery",
    "select_examples", "sort_column", "thumbnail_data_uri", "write_gallery",
]

GROUPS: dict[str, str] = {
    "best": "Best by {score}",
    "worst": "Worst by {score}",
    "sample": "Random sample of the rest",
}
SCORE_NAMES: dict[str, str] = {"cider": "CIDEr-D", "bleu4": "BLEU-4"}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.15em;margin:1.4em 0 .5em}
.summary{color:#555} .summary b{color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
.card img{display:block;width:100%;max-width:224px;height:auto;margin:0 auto 6px;border-radius:3px}
.missing{padding:2em .5em;background:#eee;color:#a00;text-align:center;font-size:.9em}
.id{color:#777;font-size:.85em} .bleu{float:right;font-weight:600;padding:0 .4em;border-radius:3px;margin-left:.3em}
.bleu small{font-weight:400;color:#555}
.hi{background:#d7f5d7} .mid{background:#f5efc8} .lo{background:#f8d4d4}
.caption{font-size:1.05em;margin:.3em 0} .caption.empty{color:#a00;font-style:italic}
ol{margin:.2em 0 0 1.2em;padding:0;color:#444;font-size:.9em}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def sort_column(table: pd.DataFrame) -> str:
    """The score the gallery ranks by: ``cider`` when the table has it, else ``bleu4``."""
    return "cider" if "cider" in table.columns else "bleu4"


def select_examples(table: pd.DataFrame, size: int, seed: int = 0) -> pd.DataFrame:
    """`size` rows of a captions table (needs ``image_id`` and ``bleu4``; ``cider`` optional)
    for the gallery.

    A third (rounded up) are the best by CIDEr-D (by BLEU-4 without a ``cider`` column), half
    the rest (rounded up) the worst, the others a seeded random sample of the remaining rows;
    ties break on ``image_id``, so the choice does not depend on the table's row order. Returns
    the rows in display order with a ``group`` column (best: descending score, worst: ascending,
    sample: descending).
    """
    if size < 0:
        raise ValueError(f"gallery size must be >= 0, got {size}")
    missing = {"image_id", "bleu4"} - set(table.columns)
    if missing:
        raise ValueError(f"captions table lacks column(s) {sorted(missing)}")
    by_score = {"by": [sort_column(table), "image_id"], "ascending": [False, True], "kind": "stable"}
    ranked = table.sort_values(**by_score)
    size = min(size, len(ranked))
    n_best = math.ceil(size / 3)
    n_worst = math.ceil((size - n_best) / 2)
    best = ranked.iloc[:n_best]
    worst = ranked.iloc[len(ranked) - n_worst :].iloc[::-1]
    middle = ranked.iloc[n_best : len(ranked) - n_worst].sort_values("image_id", kind="stable")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(middle), size - n_best - n_worst, replace=False))
    sample = middle.iloc[picked].sort_values(**by_score)
    parts = {"best": best, "worst": worst, "sample": sample}
    return pd.concat([part.assign(group=group) for group, part in parts.items()], ignore_index=True)


def thumbnail_data_uri(path: str | os.PathLike[str], max_side: int = 224, quality: int = 80) -> str:
    """A ``data:image/jpeg;base64,...`` URI of `path`, EXIF-oriented, longest side <= `max_side`.

    Raises ImageError naming the file when it is missing or not a decodable image.
    """
    p = Path(path)
    try:
        im = to_rgb(decode(p, max_side))
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality, optimize=True)
    except FileNotFoundError:
        raise ImageError(p, "file not found") from None
    except DECODE_ERRORS as e:
        raise ImageError(p, f"cannot decode image ({type(e).__name__}: {e})") from e
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _bleu_class(bleu: float) -> str:
    return "hi" if bleu >= 0.5 else "mid" if bleu >= 0.2 else "lo"


def _cider_class(cider: float) -> str:
    return "hi" if cider >= 1.0 else "mid" if cider >= 0.4 else "lo"


def _card(row: Mapping[str, object]) -> str:
    esc = html.escape
    image_id = str(row["image_id"])
    src, problem = row.get("src"), row.get("problem")
    if isinstance(src, str) and src:
        picture = f'<img src="{esc(src)}" alt="{esc(image_id)}">'
    else:
        why = problem if isinstance(problem, str) else "not embedded"
        picture = f'<div class="missing">image unavailable: {esc(why)}</div>'
    caption = str(row["caption"])
    caption_html = (f'<div class="caption">{esc(caption)}</div>' if caption.strip()
                    else '<div class="caption empty">(empty caption)</div>')
    refs = "".join(f"<li>{esc(str(r))}</li>" for r in row["references"])
    bleu = float(row["bleu4"])  # type: ignore[arg-type]
    badges = f'<span class="bleu {_bleu_class(bleu)}" title="sentence BLEU-4 (smoothed)"><small>BLEU-4</small> {bleu:.3f}</span>'
    data = f'data-bleu4="{bleu:.4f}"'
    if isinstance(row.get("cider"), (int, float)) and not math.isnan(float(row["cider"])):  # type: ignore[arg-type]
        cider = float(row["cider"])  # type: ignore[arg-type]
        badges += (f'<span class="bleu {_cider_class(cider)}" title="CIDEr-D (coco-caption, this image)">'
                   f'<small>CIDEr-D</small> {cider:.3f}</span>')
        data += f' data-cider="{cider:.4f}"'
    return (
        f'<div class="card" data-image-id="{esc(image_id)}" {data}>{picture}{badges}'
        f'<span class="id">{esc(image_id)}</span>{caption_html}<ol title="references">{refs}</ol></div>'
    )


def render_gallery(examples: pd.DataFrame, title: str, summary: Mapping[str, object] | None = None) -> str:
    """The gallery page for `examples` (rows of :func:`select_examples` plus ``src`` data URIs and
    ``problem`` texts for images that could not be embedded). All text is HTML-escaped."""
    esc = html.escape
    facts = " · ".join(f"{esc(str(k))} <b>{esc(str(v))}</b>" for k, v in (summary or {}).items())
    score = SCORE_NAMES[sort_column(examples)]
    sections = []
    for group, template in GROUPS.items():
        rows = examples[examples["group"] == group]
        heading = template.format(score=score)
        if len(rows):
            cards = "\n".join(_card(r) for r in rows.to_dict("records"))
            sections.append(
                f'<h2 id="{group}">{esc(heading)} ({len(rows)})</h2>\n<div class="grid">\n{cards}\n</div>'
            )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{esc(title)}</h1>\n<p class=\"summary\">{facts}</p>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def embed_images(
    examples: pd.DataFrame, paths: Mapping[str, str | os.PathLike[str]], root: Path, max_side: int = 224
) -> pd.DataFrame:
    """`examples` plus ``src`` (a data URI, or None) and ``problem`` (why not, or None) columns.

    `paths` maps image ids to image files, relative to `root` unless absolute.
    """
    srcs: list[str | None] = []
    problems: list[str | None] = []
    for image_id in examples["image_id"]:
        src = problem = None
        if image_id not in paths:
            problem = f"{image_id}: no image path"
        else:
            try:
                src = thumbnail_data_uri(root / paths[image_id], max_side)
            except ImageError as e:
                problem = str(e)
        srcs.append(src)
        problems.append(problem)
    return examples.assign(
        src=pd.Series(srcs, examples.index, object), problem=pd.Series(problems, examples.index, object)
    )


def write_gallery(
    path: str | os.PathLike[str],
    table: pd.DataFrame,
    paths: Mapping[str, str | os.PathLike[str]],
    size: int,
    title: str,
    summary: Mapping[str, object] | None = None,
    root: Path = Path("."),
    seed: int = 0,
    max_side: int = 224,
) -> list[str]:
    """Select, embed and render the gallery of `table`, writing it to `path` atomically.

    `paths` maps image ids to files relative to `root` (see :func:`image_paths`). Returns the
    problems of images that could not be embedded (they show as placeholders).
    """
    examples = embed_images(select_examples(table, size, seed), paths, root, max_side)
    page = render_gallery(examples, title, summary)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return [p for p in examples["problem"] if isinstance(p, str)]


def image_paths(images: pd.DataFrame) -> dict[str, str]:
    """image_id -> path from an ``images.parquet`` table (columns image_id, path)."""
    missing = {"image_id", "path"} - set(images.columns)
    if missing:
        raise ValueError(f"images table lacks column(s) {sorted(missing)}")
    return dict(zip(images["image_id"].astype(str), images["path"].astype(str)))


def bleu_rows(
    bleu: Mapping[str, float], names: Sequence[str] = ("bleu1", "bleu2", "bleu3", "bleu4")
) -> list[dict[str, object]]:
    """Corpus BLEU as plot rows ``{"bleu": "BLEU-n", "score": x}`` for a `dvc plots` bar chart."""
    return [{"bleu": f"BLEU-{n.removeprefix('bleu')}", "score": round(float(bleu[n]), 4)} for n in names]


def coco_rows(coco: Mapping[str, float], names: Mapping[str, str] | None = None) -> list[dict[str, object]]:
    """Corpus CIDEr-D and METEOR as plot rows ``{"metric": name, "score": x}`` (a `dvc plots` bar chart)."""
    names = names or {"cider": "CIDEr-D", "meteor": "METEOR"}
    return [{"metric": label, "score": round(float(coco[key]), 4)} for key, label in names.items()]
