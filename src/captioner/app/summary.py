"""The last screen of `make repro`: this run's headline scores, where its outputs are and what to
run next, in at most 100 columns (the full table stays `dvc metrics show` away).

    python -m captioner.app.summary [--metrics metrics/eval.json] [--run-info metrics/eval_run.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from captioner.model.folder import CARD_FILE, DECODING_FILE, RELEASE_DIR
from captioner.runtime.io import read_json

__all__ = ["WIDTH", "main", "summary_lines"]

WIDTH = 100


def summary_lines(metrics: Mapping[str, Any], run_info: Mapping[str, Any], root: Path = Path(".")) -> list[str]:
    """The summary, one string a line, none longer than WIDTH."""
    coco, human, blind = metrics.get("coco", {}), metrics.get("human", {}), metrics.get("blind_baseline", {})
    div = metrics.get("diversity", {})
    decoding = run_info.get("decoding", {})
    bleu = " / ".join(f"{metrics[f'bleu{n}']:.3f}" for n in range(1, 5) if f"bleu{n}" in metrics)
    lines = [
        f"captioner: {run_info.get('split', '?')} split, {run_info.get('images', '?')} images, "
        f"beam {decoding.get('beam_width', '?')}{' + consensus' if decoding.get('rerank') == 'consensus' else ''} "
        "(all scores: dvc metrics show)",
        f"  BLEU-1..4 {bleu}   METEOR {coco.get('meteor', 0):.3f}   ROUGE-L {coco.get('rouge_l', 0):.3f}"
        f"   CIDEr-D {coco.get('cider', 0):.3f}",
        f"  human ceiling CIDEr-D {human.get('coco', {}).get('cider', 0):.3f}   blind baseline CIDEr-D "
        f"{blind.get('coco', {}).get('cider', 0):.3f}   distinct captions {div.get('distinct', 0):.2f}",
    ]
    places = [("gallery", "data/eval/gallery.html", "best, worst and sampled captions (offline HTML)"),
              ("model", RELEASE_DIR, f"weights, {DECODING_FILE} and the model card {CARD_FILE}")]
    lines += [f"{name:9s} {path:26s} {what}" for name, path, what in places if (root / path).exists()]
    lines += [
        "plots     make plots                 learning curves and scores, offline",
        "next      .venv/bin/captioner caption photo.jpg    caption your own images",
        "          make flickr8k DATA=path/to/flickr8k      train on real photos (docs/DATA.md)",
        "          make compare                             experiments side by side (docs/TEAM.md)",
    ]
    return [line[:WIDTH] for line in lines]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m captioner.app.summary", description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default="metrics/eval.json")
    ap.add_argument("--run-info", default="metrics/eval_run.json")
    args = ap.parse_args(argv)
    try:
        metrics, run_info = read_json(args.metrics), read_json(args.run_info)
    except (OSError, ValueError) as e:
        print(f"captioner: no evaluation to summarise ({e}); run `make repro`", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(metrics, run_info)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
