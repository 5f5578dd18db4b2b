"""Stage: the human ceiling of the evaluated split, once per data set and split.

Each human reference is scored against the other references of its image (4 with Flickr8k's 5),
averaged over the rounds: nltk BLEU-1..4 on the cleaned captions, the coco-caption suite on the
raw ones, and the diversity of the held-out captions. It does not depend on the model, so DVC
caches it; `evaluate` copies it into metrics/eval.json under `human`."""

import argparse
import sys
import time
from pathlib import Path

try:  # first: a Python without the project's packages stops here, in one line; TensorFlow quiet
    from captioner.console import setup_stage_output
except ModuleNotFoundError as e:
    sys.exit(f"{sys.argv[0]}: {sys.executable} has no '{e.name}': activate the project's venv "
             "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")
setup_stage_output()

import pandas as pd

from captioner.cocoeval import CocoScorer, java_command
from captioner.evaluation import coco_summary, split_human_ceiling
from captioner.io import exit_on_sigterm, reported_errors, write_json
from captioner.params import load_params


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--out", default="data/human/ceiling.json")
    args = ap.parse_args()
    split = load_params().evaluate.split
    split_file = Path(args.text) / f"{split}.parquet"
    if not split_file.exists():
        raise SystemExit(f"evaluate.split: the data set has no '{split}' split ({split_file} missing)")
    start = time.perf_counter()
    with CocoScorer() as scorer:
        human = split_human_ceiling(pd.read_parquet(split_file), pd.read_parquet(Path(args.text) / "train.parquet"), scorer)
    write_json(args.out, {"split": split, **human})
    print(f"human_ceiling ({split}, {human['images']} images, each reference against the other "
          f"{human['references_per_round']}, {human['rounds']} rounds; java {java_command()}; "
          f"{time.perf_counter() - start:.1f} s): " + coco_summary(human["bleu4"], human["coco"]))


if __name__ == "__main__":
    with reported_errors("human_ceiling", (ValueError, OSError, RuntimeError)):
        main()
