"""Stage: self-critical sequence training (SCST, captioner.training.scst) of train's cross-entropy
model toward CIDEr-D, into data/model, the pipeline's trained model.

Epoch by epoch, each member makes a pass over the train images, `scst.samples` captions sampled
per image and rewarded by their CIDEr-D against its train references, minus a baseline (the other
samples' mean, or the greedy caption's); after each epoch the ensemble's dev captions, decoded as
`scst.select` says, are scored by CIDEr-D; the best epoch (0: the cross-entropy models) is kept,
and SCST stops after `scst.patience` epochs without a better one or at `scst.epochs`. Curves
(train reward and greedy dev CIDEr-D per member, the ensemble's dev CIDEr-D) go to
`--live`/curves. Either way the model folder gets the train captions' n-gram document
frequencies (ngrams.npz, for consensus reranking). `scst.epochs: 0` copies the model unchanged,
without loading TensorFlow: a change of `scst` params reruns this stage and evaluate, never
train. SCST samples from every train image each step, so the features are read whole here (not
streamed, unlike train and evaluate). Each member's state is checkpointed after every epoch into
`<out>.partial` (not a DVC output): the next `dvc repro` resumes an interrupted run bit for bit
(captioner.training.checkpoint)."""

import argparse
import sys
import time
from pathlib import Path

from _stage import run_stage

from captioner.config.params import load_params
from captioner.datasets.text import read_references
from captioner.decoding.cider import CiderD
from captioner.model.folder import NGRAMS_FILE, ModelFolder, copy_model_folder
from captioner.runtime.io import atomic_path, write_json
from captioner.training.curves import scst_metrics, write_curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-in", default="data/model_xe", help="train's cross-entropy model folder")
    ap.add_argument("--features", required=True)
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--out", default="data/model")
    ap.add_argument("--live", default="metrics/scst", help="curves/, metrics.json, run.json")
    args = ap.parse_args()
    params = load_params()
    sp = params.scst

    # the train captions' n-gram document frequencies go beside the model, for consensus reranking
    ngrams = CiderD(list(read_references(args.text, "train").values()))

    def add_ngrams(folder: Path) -> None:
        ngrams.save(folder / NGRAMS_FILE)

    with atomic_path(args.live) as live:
        live.mkdir()
        if not sp.epochs:  # a copy, without loading TensorFlow
            copy_model_folder(args.model_in, args.out, add=add_ngrams)
            write_curves(live / "curves", None)
            write_json(live / "metrics.json", {"epochs": 0})
            write_json(live / "run.json", {"epochs": 0})
            print(f"scst: off (scst.epochs 0): {args.model_in} copied to {args.out}")
            return

        from captioner.features.store import read_features
        from captioner.training.checkpoint import CheckpointFolder, resume_hint
        from captioner.training.scst import ScstConfig, finetune, split_references

        folder = ModelFolder.open(args.model_in)
        vocab = folder.vocabulary()
        models = folder.load_models(folder.feature_dim, len(vocab))
        feature_ids, features, _ = read_features(args.features)
        refs = split_references(args.text, feature_ids)
        config = ScstConfig(sp.samples, sp.max_length, sp.baseline, sp.learning_rate, sp.batch_size, params.train.seed)
        print(f"scst: {sp.epochs} epoch(s) x {len(models)} model(s), {sp.samples} samples per image, baseline "
              f"{sp.baseline}, {len(refs['train'][0])} train / {len(refs['dev'][0])} dev images")
        checkpoints = CheckpointFolder.for_stage(
            "scst", args.out, {"scst": sp.model_dump(), "seed": params.train.seed},
            {"model": args.model_in, "features": args.features, "text": args.text}, sp.epochs, len(models))
        start = time.perf_counter()
        with resume_hint(checkpoints, sp.epochs, len(models), together=True):
            result = finetune(models, features, refs["train"], refs["dev"], vocab, config, sp.epochs, sp.select,
                              sp.patience, progress=sys.stdout.isatty(), checkpoints=checkpoints)
        seconds = time.perf_counter() - start
        copy_model_folder(args.model_in, args.out, models, {**folder.meta, "scst": {
            "epochs": sp.epochs, "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"]}}, add_ngrams)
        write_curves(live / "curves", result)
        metrics = scst_metrics(result, sp.epochs)
        write_json(live / "metrics.json", metrics)
        write_json(live / "run.json", {"seconds": round(seconds, 1), **result})
        checkpoints.remove()
    print(f"scst: ensemble dev CIDEr-D {metrics['dev_cider_xe']:.4f} -> {metrics['dev_cider']:.4f} (beam "
          f"{sp.select.beam_width}; best epoch {result['best_epoch']} of {result['epochs_run']} run), "
          f"{seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    run_stage("scst", main)
