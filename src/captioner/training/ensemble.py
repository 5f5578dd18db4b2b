"""The `train` stage's run, as plain functions: the captions to train on (those whose image has
features), the ensemble's member jobs from the `model` and `train` params, and what the run
reports. The members themselves are fitted by an engine (captioner.engines.ensemble), each by
:func:`captioner.training.fit.train_member`."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from captioner.config.params import ModelParams, TrainParams
from captioner.datasets.sequences import drop_without_features, load_sequences
from captioner.features.store import FeatureFile
from captioner.model.build import build_member
from captioner.training.batches import batch_count, caption_lengths
from captioner.training.fit import FitResult, MemberJob, TrainData

__all__ = ["check_spatial", "member_jobs", "member_kinds", "run_info", "train_words", "training_data"]

TRAIN_SPLITS = ("train", "dev")  # dev picks the best epoch and drives the LR schedule


def check_spatial(features: FeatureFile, kind: str) -> None:
    """ValueError naming the file when `kind` ("merge" | "attention") cannot read its features."""
    grid = features.grid is not None
    if grid != (kind == "attention"):
        raise ValueError(
            f"{features.path}: model.kind={kind} needs {'grid' if kind == 'attention' else 'pooled'} "
            f"features but the file holds {'grid' if grid else 'pooled'} ones (features.spatial)"
        )


def training_data(features: FeatureFile, sequences: str | os.PathLike[str]) -> tuple[TrainData, dict[str, list[str]]]:
    """The train and dev captions (`<sequences>/{split}.npz`) whose image has features, with
    their feature rows; and, by split, the image ids dropped for having none."""
    kept, dropped = {}, {}
    for split in TRAIN_SPLITS:
        ids, _, rows, dropped[split] = drop_without_features(
            *load_sequences(Path(sequences) / f"{split}.npz"), features.ids, f"{features.path} ({split})")
        kept[split] = (ids, rows)
    return TrainData(*kept["train"], *kept["dev"], features), dropped


def train_words(data: TrainData, train: TrainParams) -> int:
    """Words an epoch trains on (a capped epoch: the expected words of its `max_batches` batches)."""
    words = int((data.train_ids[:, 1:] != 0).sum())
    if train.max_batches:
        batches = batch_count(caption_lengths(data.train_ids), train.batch_size, train.bucket_width)
        words = round(words * min(1.0, train.max_batches / batches))
    return words


def member_kinds(model: ModelParams, train: TrainParams) -> list[str]:
    """Each member's kind: `model.kind`, the last `train.merge_members` of them merge."""
    return [model.kind] * (train.ensemble - train.merge_members) + ["merge"] * train.merge_members


def member_jobs(model: ModelParams, train: TrainParams, vocab_size: int, features: FeatureFile,
                precision: str, checkpoints: str | os.PathLike[str] = "") -> list[MemberJob]:
    """One job per ensemble member: member i trains with seed `train.seed` + i (and resumes
    from, and checkpoints into, the CheckpointFolder at `checkpoints` when given)."""
    return [
        MemberJob(
            member=m, seed=train.seed + m,
            build=functools.partial(build_member, kind, model, vocab_size, features.dim, features.grid),
            precision=precision, learning_rate=train.learning_rate, label_smoothing=train.label_smoothing,
            batch_size=train.batch_size, bucket_width=train.bucket_width, epochs=train.epochs,
            patience=train.patience, lr_factor=train.lr_factor, lr_patience=train.lr_patience,
            devices=train.devices, window_mb=train.feature_window_mb, max_batches=train.max_batches,
            checkpoints=str(checkpoints),
        )
        for m, kind in enumerate(member_kinds(model, train))
    ]


def run_info(results: Sequence[FitResult], seconds: float, words: int) -> dict:
    """run.json: epochs run (member 0), time, words per second, each member's best epoch and loss."""
    epochs_run = sum(r.epochs_run for r in results)
    return {
        "epochs_run": results[0].epochs_run, "train_seconds": round(seconds, 1),
        "train_words_per_s": round(words * epochs_run / seconds, 1),
        "members_best_epoch": [r.best_epoch for r in results],
        "members_best_val_loss": [round(r.best_val_loss, 5) for r in results],
    }
