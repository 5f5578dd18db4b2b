"""Learning curves and summaries, as plain files for `dvc plots` and `dvc metrics` (no TensorFlow).

Cross-entropy curves (written while training by captioner.training.fit.CurveLogger): one TSV per
Keras metric (`loss.tsv`, `masked_accuracy.tsv`, ...) with the columns `epoch` (from 1, like
`best_epoch`), `train` and `validation`, so a plot of both columns names its lines "train" and
"validation". Summary: the values of the epoch whose weights are kept (the best validation
loss), never the last epoch's. SCST curves: `reward.tsv` and `dev_cider.tsv`, one column per member
(and the ensemble's dev CIDEr-D, which chooses the epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from pathlib import Path

__all__ = ["best_epoch_summary", "scst_metrics", "write_curves"]


def best_epoch_summary(history: Mapping[str, Sequence[float]], best_epoch: int) -> dict[str, float | int]:
    """`best_epoch`, `best_val_loss`, and train/validation loss and accuracy at that epoch (1-based)."""
    i = best_epoch - 1
    summary: dict[str, float | int] = {"best_epoch": best_epoch, "best_val_loss": round(float(history["val_loss"][i]), 5)}
    for key, name in (("loss", "train_loss"), ("masked_accuracy", "train_accuracy"),
                      ("val_masked_accuracy", "val_accuracy")):
        if key in history:
            summary[name] = round(float(history[key][i]), 5)
    return summary


def write_curves(folder: Path, result: Mapping[str, Any] | None) -> None:
    """reward.tsv (mean sampled train reward, from epoch 1) and dev_cider.tsv (greedy dev CIDEr-D
    of each member and the ensemble's, as SCST chose epochs by, from epoch 0), one row per
    epoch, one column per member; header-only files when SCST is off (`result` None)."""
    folder.mkdir(parents=True, exist_ok=True)
    histories = result["members"] if result else []
    members = [f"member_{h['member']}" for h in histories]
    for name, key, first in (("reward", "reward", 1), ("dev_cider", "dev_cider", 0)):
        ensemble = name == "dev_cider"
        epochs = histories[0]["epochs"][first:] if histories else []
        rows = ["\t".join(["epoch", *members, *(["ensemble"] if ensemble else [])])] + [
            "\t".join([str(e["epoch"]), *(f"{h['epochs'][e['epoch']][key]:.6g}" for h in histories),
                       *([f"{result['ensemble'][e['epoch']]['dev_cider']:.6g}"] if ensemble else [])])
            for e in epochs
        ]
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def scst_metrics(result: Mapping[str, Any], epochs: int) -> dict:
    """metrics.json: the ensemble's dev CIDEr-D (decoded as SCST chose epochs by) after
    cross-entropy and at the chosen epoch, that epoch and the epochs run."""
    history = result["ensemble"]
    return {"epochs": epochs, "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
            "dev_cider_xe": history[0]["dev_cider"], "dev_cider": history[result["best_epoch"]]["dev_cider"]}

