"""Stage: the human ceiling of the evaluated split, once per data set and split.

Each human reference is scored against the other references of its image (4 with Flickr8k's 5),
averaged over the rounds: nltk BLEU-1..4 on the cleaned captions, the coco-caption suite on the
raw ones, and the diversity of the held-out captions. It does not depend on the model, so DVC
caches it; `evaluate` copies it into metrics/eval.json under `human`."""

import argparse
import time

from _stage import run_stage

from captioner.config.params import load_params
from captioner.evaluation.cocoeval import CocoScorer, java_command
from captioner.evaluation.scores import SplitText, coco_summary, split_human_ceiling
from captioner.runtime.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--out", default="data/human/ceiling.json")
    args = ap.parse_args()
    text = SplitText.read(args.text, load_params().evaluate.split)
    start = time.perf_counter()
    with CocoScorer() as scorer:
        human = split_human_ceiling(text.table, text.train, scorer)
    write_json(args.out, {"split": text.split, **human})
    print(f"human_ceiling ({text.split}, {human['images']} images, each reference against the other "
          f"{human['references_per_round']}, {human['rounds']} rounds; java {java_command()}; "
          f"{time.perf_counter() - start:.1f} s): " + coco_summary(human["bleu4"], human["coco"]))


if __name__ == "__main__":
    run_stage("human_ceiling", main, (ValueError, OSError, RuntimeError))
