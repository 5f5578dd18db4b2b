"""Stage: train the captioner (model.kind: merge or attention) with masked teacher forcing
(cross-entropy); keep the best epoch. The `scst` stage then fine-tunes it toward CIDEr-D (or
copies it, `scst.epochs: 0`) into data/model.

Captions whose image has no features (unreadable, skipped by extract_features) are dropped
and counted. The model folder and the curves folder (`--live`: metrics.json holds the best
epoch's losses only; timings and per-member figures go to run.json, which is not a DVC metric)
are both written atomically.

`train.engine: ray` trains the ensemble members as parallel Ray tasks (captioner.engines);
`train.devices` spreads each member over several GPUs of one host (MirroredStrategy). Both
run :func:`captioner.training.train_member`, the local code."""

import argparse
import functools
import sys
import time
from pathlib import Path

try:  # first: a Python without the project's packages stops here, in one line; TensorFlow quiet
    from captioner.console import setup_stage_output
except ModuleNotFoundError as e:
    sys.exit(f"{sys.argv[0]}: {sys.executable} has no '{e.name}': activate the project's venv "
             "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")
setup_stage_output()

import keras

from captioner.curves import CurveLogger, best_epoch_summary
from captioner.engines.ensemble import train_members
from captioner.feature_file import FeatureFile
from captioner.features import report_path
from captioner.io import atomic_path, exit_on_sigterm, reported_errors, write_json
from captioner.model import build_attention_model, build_merge_model
from captioner.params import load_params
from captioner.precision import describe_devices, resolve_precision
from captioner.sequences import drop_without_features, load_sequences
from captioner.text import load_vocabulary, save_vocabulary
from captioner.params import ModelParams
from captioner.streaming import batch_count
from captioner.training import MemberJob, TrainData, caption_lengths


def build(kind: str, mp: ModelParams, vocab_size: int, dim: int, grid: bool, regions: int, channels: int) -> keras.Model:
    """A fresh, untrained member of `kind` (module-level and given plain values only, so a
    `functools.partial` of it is cheap to send to a Ray task)."""
    if kind == "merge" and not grid:
        return build_merge_model(vocab_size, dim, mp.embedding_dim, mp.units, mp.dropout)
    if kind == "merge":  # a merge member of an attention ensemble: averages the grid itself
        return build_merge_model(vocab_size, channels, mp.embedding_dim, mp.units, mp.dropout, regions)
    return build_attention_model(
        vocab_size, regions, channels, mp.embedding_dim, mp.units,
        mp.attention_dim, mp.dropout, mp.attention_reg, mp.region_dropout,
    )


def main() -> None:
    exit_on_sigterm()
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
    feat_ids, meta = list(features.ids), features.meta
    seqs, rows = {}, {}
    for s in ("train", "dev"):
        path = Path(args.sequences) / f"{s}.npz"
        ids, img, rows[s], missing = drop_without_features(*load_sequences(path), feat_ids, f"{args.features} ({s})")
        seqs[s] = (ids, img)
        if missing:
            print(f"train: dropped the captions of {len(missing)} {s} image(s) without features "
                  f"(unreadable, see {report_path(args.features)}), e.g. {missing[:3]}", file=sys.stderr)

    grid = meta.get("spatial") == "grid"
    if grid != (mp.kind == "attention"):
        raise ValueError(
            f"{args.features}: model.kind={mp.kind} needs {'grid' if mp.kind == 'attention' else 'pooled'} "
            f"features but the file holds {'grid' if grid else 'pooled'} ones (features.spatial)"
        )

    kinds = [mp.kind] * (tp.ensemble - tp.merge_members) + ["merge"] * tp.merge_members
    regions, channels = (int(meta["regions"]), int(meta["channels"])) if grid else (0, 0)

    train_ids, dev_ids = seqs["train"][0], seqs["dev"][0]
    n_words = int((train_ids[:, 1:] != 0).sum())
    if tp.max_batches:  # capped epochs: the expected words of max_batches batches in shuffled order
        n_words = round(n_words * min(1.0, tp.max_batches / batch_count(caption_lengths(train_ids), tp.batch_size,
                                                                         tp.bucket_width)))
    shape = f"{meta['regions']} x {meta['channels']}-d" if grid else f"{features.dim}-d"
    precision = resolve_precision(tp.precision)  # auto: detected from this machine's GPUs and CPU flags
    print(f"train: {describe_devices()}")
    print(f"train: {mp.kind} model, {len(train_ids)} captions ({n_words} words), vocabulary {len(vocab)}, "
          f"{shape} {meta.get('backbone')} features ({features.dtype}, {len(features)} images, "
          f"{features.groups} row groups streamed in windows of {tp.feature_window_mb:g} MB), {tp.ensemble} model(s): {', '.join(kinds)}; "
          f"precision {precision}{' (auto)' if tp.precision == 'auto' else ''}; engine {tp.engine}, {tp.threads} TensorFlow thread(s)"
          + (f", {tp.devices} devices" if tp.devices else ""))
    data = TrainData(train_ids, rows["train"], dev_ids, rows["dev"], features)
    jobs = [  # member i trains with seed + i; curves of member 0
        MemberJob(
            member=m, seed=tp.seed + m,
            build=functools.partial(build, kinds[m], mp, len(vocab), features.dim, grid, regions, channels),
            precision=precision, learning_rate=tp.learning_rate, label_smoothing=tp.label_smoothing,
            batch_size=tp.batch_size, bucket_width=tp.bucket_width, epochs=tp.epochs, patience=tp.patience,
            lr_factor=tp.lr_factor, lr_patience=tp.lr_patience, devices=tp.devices,
            window_mb=tp.feature_window_mb, max_batches=tp.max_batches,
        )
        for m in range(tp.ensemble)
    ]

    with atomic_path(args.live) as live_dir:  # a killed run leaves the old curves or none
        live_dir.mkdir()
        start = time.perf_counter()
        trained = train_members(
            tp.engine, jobs, data, tp.threads, lambda: [CurveLogger(live_dir / "curves")],
            verbose=1 if sys.stdout.isatty() else 2,  # a bar with ETA on a terminal, a line per epoch in logs
        )
        models, results = [m for m, _ in trained], [r for _, r in trained]
        seconds = time.perf_counter() - start
        result = results[0]
        epochs_run = sum(r.epochs_run for r in results)
        write_json(live_dir / "metrics.json", best_epoch_summary(result.history, result.best_epoch))
        write_json(live_dir / "run.json", {  # run information, not a DVC metric
            "epochs_run": result.epochs_run, "train_seconds": round(seconds, 1),
            "train_words_per_s": round(n_words * epochs_run / seconds, 1),
            "members_best_epoch": [r.best_epoch for r in results],
            "members_best_val_loss": [round(r.best_val_loss, 5) for r in results],
        })

        members = ["model.keras"] + [f"model_{i}.keras" for i in range(1, len(models))]
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            for name, model in zip(members, models):
                model.save(tmp / name)
            save_vocabulary(tmp / "vocab.json", vocab)
            write_json(tmp / "meta.json", {
                "backbone": meta.get("backbone"), "weights": meta.get("weights"),
                "feature_dim": features.dim, "vocab_size": len(vocab), "members": members,
                "kind": mp.kind, "member_kinds": kinds, "spatial": "grid" if grid else "pooled",
                "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
            })
    print(f"train: best epoch {result.best_epoch}/{result.epochs_run}, val loss "
          f"{result.best_val_loss:.4f}, {seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    with reported_errors("train"):
        main()
