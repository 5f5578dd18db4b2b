"""Stage: train the captioner's ensemble members (model.kind: merge or attention) by masked
teacher forcing (cross-entropy), each keeping its best epoch, into the model folder `--out`; the
`scst` stage then fine-tunes it toward CIDEr-D (or copies it, `scst.epochs: 0`) into data/model.

Every member's state is checkpointed after each epoch into `<out>.partial` (not a DVC output):
a killed or interrupted run is resumed by the next `dvc repro`, bit for bit, finished members
are not trained again (captioner.training.checkpoint). Captions whose image has no features (unreadable, skipped by extract_features) are dropped and
counted. `--live` gets member 0's curves and best epoch's losses (metrics.json) and run.json
(timings, every member's best epoch: not a DVC metric). `train.engine: ray` trains the members
as parallel Ray tasks; `train.devices` spreads each member over several GPUs of one host."""

import argparse
import sys
import time
from pathlib import Path

from _stage import run_stage

from captioner.config.params import load_params
from captioner.datasets.text import load_vocabulary
from captioner.engines.ensemble import train_members
from captioner.features.store import FeatureFile, report_path
from captioner.model.folder import model_meta, save_model_folder
from captioner.runtime.io import atomic_path, write_json
from captioner.training.checkpoint import CheckpointFolder, resume_hint
from captioner.training.curves import best_epoch_summary
from captioner.training.fit import CurveLogger
from captioner.training.ensemble import check_spatial, member_jobs, member_kinds, run_info, train_words, training_data
from captioner.training.precision import describe_devices, resolve_precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--features", required=True)
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--sequences", default="data/sequences")
    ap.add_argument("--out", default="data/model_xe")
    ap.add_argument("--live", default="metrics/train")
    args = ap.parse_args()
    params = load_params()
    mp, tp = params.model, params.train

    vocab = load_vocabulary(Path(args.text) / "vocab.json")
    features = FeatureFile.open(args.features)  # streamed in windows of row groups, never read whole
    check_spatial(features, mp.kind)
    data, dropped = training_data(features, args.sequences)
    for split, missing in dropped.items():
        if missing:
            print(f"train: dropped the captions of {len(missing)} {split} image(s) without features "
                  f"(unreadable, see {report_path(args.features)}), e.g. {missing[:3]}", file=sys.stderr)
    precision = resolve_precision(tp.precision)  # auto: detected from this machine's GPUs and CPU flags
    kinds, words = member_kinds(mp, tp), train_words(data, tp)
    print(f"train: {describe_devices()}")
    print(f"train: {mp.kind} model, {len(data.train_ids)} captions ({words} words), vocabulary {len(vocab)}, "
          f"{features.describe()} streamed in windows of {tp.feature_window_mb:g} MB, {tp.ensemble} model(s): "
          f"{', '.join(kinds)}; precision {precision}{' (auto)' if tp.precision == 'auto' else ''}; engine "
          f"{tp.engine}, {tp.threads} TensorFlow thread(s)" + (f", {tp.devices} devices" if tp.devices else ""))

    checkpoints = CheckpointFolder.for_stage(
        "train", args.out, {"model": mp.model_dump(), "train": tp.model_dump()},
        {"features": args.features, "sequences": args.sequences, "vocab": Path(args.text) / "vocab.json"},
        tp.epochs, tp.ensemble)
    with resume_hint(checkpoints, tp.epochs, tp.ensemble), atomic_path(args.live) as live:
        live.mkdir()  # a killed run leaves the old curves or none
        start = time.perf_counter()
        trained = train_members(tp.engine, member_jobs(mp, tp, len(vocab), features, precision, checkpoints.root),
                                data, tp.threads, lambda: [CurveLogger(live / "curves")],
                                verbose=1 if sys.stdout.isatty() else 2)  # a bar on a terminal, a line per epoch in logs
        seconds = time.perf_counter() - start
        models, results = [m for m, _ in trained], [r for _, r in trained]
        best = results[0]
        write_json(live / "metrics.json", best_epoch_summary(best.history, best.best_epoch))
        write_json(live / "run.json", run_info(results, seconds, words))
        save_model_folder(args.out, models, vocab, model_meta(
            backbone=features.backbone, weights=features.weights, feature_dim=features.dim, vocab_size=len(vocab),
            member_kinds=kinds, grid=features.grid is not None, best_epoch=best.best_epoch,
            best_val_loss=best.best_val_loss))
    checkpoints.remove()
    print(f"train: best epoch {best.best_epoch}/{best.epochs_run}, val loss {best.best_val_loss:.4f}, "
          f"{seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    run_stage("train", main)
