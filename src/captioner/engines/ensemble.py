"""`train.engine`: where the ensemble members are fitted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from captioner.engines import check_engine

if TYPE_CHECKING:
    import keras

    from captioner.training.fit import FitResult, MemberJob, TrainData

__all__ = ["train_members"]


def train_members(
    engine: str, jobs: Sequence[MemberJob], data: TrainData, threads: int,
    member0_callbacks: Callable[[], list[keras.callbacks.Callback]] | None = None,
    verbose: int | str = 2,
) -> list[tuple[keras.Model, FitResult]]:
    """Fit every ensemble member: one after another here (``local``), or as parallel Ray tasks
    (``ray``). Member 0 gets `member0_callbacks()` here; under Ray its epochs are replayed
    through them once it is done (its progress lines come through Ray's log)."""
    check_engine(engine, "train.engine")
    if engine == "ray":
        from captioner.engines.ray_train import train_members as ray_train_members

        return ray_train_members(jobs, data, threads, member0_callbacks, verbose)
    from captioner.runtime.threads import pin_threads
    from captioner.training.fit import train_member

    pin_threads(threads)
    return [
        train_member(job, data, member0_callbacks() if (i == 0 and member0_callbacks) else None, verbose)
        for i, job in enumerate(jobs)
    ]
