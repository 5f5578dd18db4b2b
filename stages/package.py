"""Stage: package the trained model for its users: data/release/ = the model files, meta.json
(with the data set), decoding.json (the evaluation's decoding settings) and README.md, the model
card with the evaluation's metrics. Declared as the DVC artifact `captioner-model` (dvc.yaml)."""

import argparse
import subprocess
from pathlib import Path

from _stage import run_stage

from captioner.app.model_card import CardFacts, render_card
from captioner.config.decoding import DecodingConfig
from captioner.config.params import load_params
from captioner.datasets.readers import dataset_name
from captioner.model.folder import ModelFolder, write_release
from captioner.runtime.io import read_json


def git_commit() -> str:
    """The checked-out commit (an experiment's baseline while `dvc exp run` runs), or "unknown"."""
    out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="data/model")
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--metrics", default="metrics/eval.json")
    ap.add_argument("--run-info", default="metrics/eval_run.json")
    ap.add_argument("--name", default="captioner-model")
    ap.add_argument("--out", default="data/release")
    args = ap.parse_args()
    params = load_params()
    meta = ModelFolder.open(args.model).meta
    run_info = read_json(args.run_info)
    decoding = DecodingConfig.of(params.evaluate)
    if run_info.get("decoding") != decoding.as_dict():
        raise ValueError(f"{args.run_info} was decoded with {run_info.get('decoding')}, params.yaml says "
                         f"{decoding.as_dict()}: run `dvc repro` so evaluate and package agree")
    dataset = dataset_name(params.data.root)
    facts = CardFacts(
        name=args.name, dataset=dataset, data_root=params.data.root,
        split_images=read_json(Path(args.text) / "report.json")["images"],
        eval_split=run_info["split"], eval_images=run_info["images"],
        backbone=str(meta.get("backbone")), meta=meta,
        params={"model": params.model.model_dump(), "train": params.train.model_dump(),
                "scst": params.scst.model_dump(), "evaluate": params.evaluate.model_dump()},
        decoding=decoding.as_dict(), metrics=read_json(args.metrics), commit=git_commit(),
    )
    names = write_release(args.model, args.out, decoding, render_card(facts), dataset)
    print(f"package: {args.out}: {', '.join(names)} ({dataset}, {run_info['split']} BLEU-4 "
          f"{facts.metrics.get('bleu4')})")


if __name__ == "__main__":
    run_stage("package", main, (ValueError, OSError, KeyError))
