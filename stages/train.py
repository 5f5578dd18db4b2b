"""Stage: train the merge captioner with masked teacher forcing; keep the best epoch.

Captions whose image has no features (unreadable, skipped by extract_features) are dropped
and counted. The model folder and the dvclive folder are both written atomically."""

import argparse
import sys
import time
from pathlib import Path

import keras
import numpy as np
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from captioner.features import read_features, report_path
from captioner.io import atomic_path, exit_on_sigterm, reported_errors, write_json
from captioner.model import build_merge_model
from captioner.params import load_params
from captioner.sequences import drop_without_features, load_sequences
from captioner.text import load_vocabulary, save_vocabulary
from captioner.training import compile_model, fit, make_dataset


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--features", required=True)
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--sequences", default="data/sequences")
    ap.add_argument("--out", default="data/model")
    ap.add_argument("--live", default="metrics/train")
    args = ap.parse_args()
    params = load_params()
    mp, tp = params.model, params.train
    keras.utils.set_random_seed(tp.seed)

    vocab = load_vocabulary(Path(args.text) / "vocab.json")
    feat_ids, features, meta = read_features(args.features)
    seqs, rows = {}, {}
    for s in ("train", "dev"):
        path = Path(args.sequences) / f"{s}.npz"
        ids, img, rows[s], missing = drop_without_features(*load_sequences(path), feat_ids, f"{args.features} ({s})")
        seqs[s] = (ids, img)
        if missing:
            print(f"train: dropped the captions of {len(missing)} {s} image(s) without features "
                  f"(unreadable, see {report_path(args.features)}), e.g. {missing[:3]}", file=sys.stderr)

    model = build_merge_model(len(vocab), features.shape[1], mp.embedding_dim, mp.units, mp.dropout)
    compile_model(model, tp.learning_rate, tp.label_smoothing)
    train = make_dataset(seqs["train"][0], rows["train"], features, tp.batch_size, tp.bucket_width, tp.seed)
    dev = make_dataset(seqs["dev"][0], rows["dev"], features, tp.batch_size, tp.bucket_width, None)
    n_words = int((seqs["train"][0][:, 1:] != 0).sum())
    print(f"train: {len(seqs['train'][0])} captions ({n_words} words), vocabulary {len(vocab)}, "
          f"{features.shape[1]}-d {meta.get('backbone')} features")

    with atomic_path(args.live) as live_dir:  # a killed run leaves the old curves or none
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None)  # dvc.yaml declares outputs
        start = time.perf_counter()
        result = fit(
            model, train, dev, tp.epochs, tp.patience, callbacks=[DVCLiveCallback(live=live)],
            verbose=1 if sys.stdout.isatty() else 2,  # a bar with ETA on a terminal, a line per epoch in logs
            lr_factor=tp.lr_factor, lr_patience=tp.lr_patience,
        )
        seconds = time.perf_counter() - start
        live.summary.update(
            best_epoch=result.best_epoch, best_val_loss=result.best_val_loss,
            epochs_run=result.epochs_run, train_seconds=round(seconds, 1),
            train_words_per_s=round(n_words * result.epochs_run / seconds, 1),
        )
        live.make_summary()

        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            model.save(tmp / "model.keras")
            save_vocabulary(tmp / "vocab.json", vocab)
            write_json(tmp / "meta.json", {
                "backbone": meta.get("backbone"), "weights": meta.get("weights"),
                "feature_dim": int(features.shape[1]), "vocab_size": len(vocab),
                "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
            })
    print(f"train: best epoch {result.best_epoch}/{result.epochs_run}, val loss "
          f"{result.best_val_loss:.4f}, {seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    with reported_errors("train"):
        main()
