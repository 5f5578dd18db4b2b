"""Stage: write the embedded default data set (generated scenes) in the Flickr8k layout."""

import argparse

from _stage import run_stage

from captioner.config.params import load_params
from captioner.datasets.scenes import generate_scenes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/raw/scenes")
    args = ap.parse_args()
    p = load_params().scenes
    summary = generate_scenes(
        args.out, n_images=p.n_images, image_size=p.image_size, seed=p.seed,
        split_fractions=p.split_fractions,
    )
    print(f"generate_scenes: {summary}")


if __name__ == "__main__":
    run_stage("generate_scenes", main)
