"""Learning curves and the best epoch's summary, as plain files for `dvc plots` and `dvc metrics`.

Curves: one TSV per Keras metric (`loss.tsv`, `masked_accuracy.tsv`, ...) with the columns
`epoch` (from 1, like `best_epoch`), `train` and `validation`, so a plot of both columns names its
lines "train" and "validation". Summary: the values of the epoch whose weights are kept (the best
validation loss), never the last epoch's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import keras


class CurveLogger(keras.callbacks.Callback):
    """Rewrites `folder/<metric>.tsv` after every epoch (readable while training runs)."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.rows: dict[str, list[tuple[int, float, float]]] = {}

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        logs = logs or {}
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, value in logs.items():
            if name.startswith("val_") or f"val_{name}" not in logs:
                continue  # validation columns ride with their train metric; learning_rate has none
            self.rows.setdefault(name, []).append((epoch + 1, float(value), float(logs[f"val_{name}"])))
            lines = ["epoch\ttrain\tvalidation"] + [f"{e}\t{t:.6g}\t{v:.6g}" for e, t, v in self.rows[name]]
            (self.folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def best_epoch_summary(history: Mapping[str, Sequence[float]], best_epoch: int) -> dict[str, float | int]:
    """`best_epoch`, `best_val_loss`, and train/validation loss and accuracy at that epoch (1-based)."""
    i = best_epoch - 1
    summary: dict[str, float | int] = {"best_epoch": best_epoch, "best_val_loss": round(float(history["val_loss"][i]), 5)}
    for key, name in (("loss", "train_loss"), ("masked_accuracy", "train_accuracy"),
                      ("val_masked_accuracy", "val_accuracy")):
        if key in history:
            summary[name] = round(float(history[key][i]), 5)
    return summary
