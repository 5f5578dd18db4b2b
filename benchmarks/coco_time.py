"""Time the coco-caption suite as `evaluate` runs it, on the Flickr8k dev split's real references.

    python benchmarks/coco_time.py --data ../shared/flickr8k [--human]

Candidates: each image's first reference stands in for a model caption, scored against the
other four (the first round of the human ceiling), plus one blind-baseline caption for every
image, as evaluate scores both. Prints the seconds from the
scorer's start (the METEOR JVM loads its paraphrase table, ~15 s) to the last score: PTB
tokenisation, BLEU, METEOR, ROUGE-L, CIDEr-D. With --human, also times the human ceiling
(the human_ceiling stage's work) on the same references.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

from captioner.evaluation.cocoeval import CocoScorer, coco_scores, human_ceiling, java_command
from captioner.datasets.text import clean_caption


def read_split(root: Path, split: str) -> dict[str, list[str]]:
    """image name -> its raw captions from Flickr8k.token.txt, for the images of one split."""
    names = set((root / f"Flickr_8k.{split}Images.txt").read_text().split())
    refs: dict[str, list[str]] = defaultdict(list)
    for line in (root / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        key, _, caption = line.partition("\t")
        name = key.split("#")[0]
        if name in names and caption.strip():
            refs[name].append(caption.strip())
    return dict(refs)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/flickr8k")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--images", type=int, default=1000, help="the first this many images of the split")
    ap.add_argument("--human", action="store_true", help="also time the human ceiling")
    args = ap.parse_args(argv)
    refs = dict(sorted(read_split(Path(args.data), args.split).items())[: args.images])
    others = {i: r[1:] for i, r in refs.items()}
    candidates = {"model": {i: r[0] for i, r in refs.items()},
                  "blind": dict.fromkeys(refs, "A dog runs through the grass.")}

    start = time.perf_counter()
    with CocoScorer() as scorer:
        result = coco_scores(scorer, others, candidates)["model"]
        seconds = time.perf_counter() - start
        print(f"coco suite, {len(refs)} {args.split} images x {len(candidates)} candidate sets "
              f"(java {java_command()}): {seconds:.1f} s")
        print("  first reference vs the other four: "
              + "  ".join(f"{k} {v:.3f}" for k, v in result.corpus.items()))
        out = {"coco_seconds": round(seconds, 1)}
        if args.human:
            start = time.perf_counter()
            clean = {i: [clean_caption(c).split() for c in r] for i, r in refs.items()}
            human = human_ceiling(scorer, refs, clean, set())
            out["human_seconds"] = round(time.perf_counter() - start, 1)
            print(f"human ceiling ({human['rounds']} rounds, METEOR JVM already up): {out['human_seconds']:.1f} s; "
                  f"nltk BLEU-4 {human['bleu4']:.3f}  "
                  + "  ".join(f"{k} {v:.3f}" for k, v in human["coco"].items()))
    t = os.times()  # the JVMs are children, counted once they have exited (scorer closed)
    out["cpu_seconds"] = round(t.user + t.system + t.children_user + t.children_system, 1)
    print(f"CPU time, whole run: {out['cpu_seconds']:.1f} s (Python {t.user + t.system:.1f} s, "
          f"JVMs {t.children_user + t.children_system:.1f} s); load average now {os.getloadavg()[0]:.1f}")
    return out


if __name__ == "__main__":
    main()
