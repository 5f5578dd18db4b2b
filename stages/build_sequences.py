"""Stage: integer-encode cleaned captions into padded arrays per split."""

import argparse
from pathlib import Path

from _stage import run_stage

import pandas as pd

from captioner.config.params import SPLITS, load_params
from captioner.datasets.sequences import encode_captions, save_sequences
from captioner.runtime.io import atomic_path
from captioner.datasets.text import load_vocabulary


def main() -> None:
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
    run_stage("build_sequences", main)
