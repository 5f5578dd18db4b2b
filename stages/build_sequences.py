"""Stage: integer-encode cleaned captions into padded arrays per split."""

import argparse
import sys
from pathlib import Path

try:  # first: a Python without the project's packages stops here, in one line; TensorFlow quiet
    from captioner.console import setup_stage_output
except ModuleNotFoundError as e:
    sys.exit(f"{sys.argv[0]}: {sys.executable} has no '{e.name}': activate the project's venv "
             "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")
setup_stage_output()

import pandas as pd

from captioner.io import atomic_path, exit_on_sigterm, reported_errors
from captioner.params import SPLITS, load_params
from captioner.sequences import encode_captions, save_sequences
from captioner.text import load_vocabulary


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--out", default="data/sequences")
    args = ap.parse_args()
    p = load_params().sequences
    vocab = load_vocabulary(Path(args.text) / "vocab.json")
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for path in sorted(Path(args.text).glob("*.parquet")):
            if path.stem not in SPLITS:
                continue
            caps = pd.read_parquet(path)
            ids = encode_captions(list(caps["caption"]), vocab, p.max_length)
            save_sequences(tmp / f"{path.stem}.npz", ids, list(caps["image_id"]))
            print(f"build_sequences: {path.stem}: {ids.shape[0]} captions x {ids.shape[1]} ids")


if __name__ == "__main__":
    with reported_errors("build_sequences"):
        main()
