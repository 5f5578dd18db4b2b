"""Stage: write the embedded default data set (generated scenes) in the Flickr8k layout."""

import argparse
import sys

try:  # first: a Python without the project's packages stops here, in one line; TensorFlow quiet
    from captioner.console import setup_stage_output
except ModuleNotFoundError as e:
    sys.exit(f"{sys.argv[0]}: {sys.executable} has no '{e.name}': activate the project's venv "
             "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")
setup_stage_output()

from captioner.datasets.scenes import generate_scenes
from captioner.io import exit_on_sigterm, reported_errors
from captioner.params import load_params


def main() -> None:
    exit_on_sigterm()
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
    with reported_errors("generate_scenes"):
        main()
