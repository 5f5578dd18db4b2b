"""train.engine=ray: each ensemble member's :func:`captioner.training.fit.train_member` is one Ray
task in a fresh worker process (one GPU where the cluster has GPUs, else `threads` CPUs).

A worker that dies (killed, out of memory, a lost node) is retried by Ray up to `RETRIES` times;
the retry resumes from the member's last epoch checkpoint (the job's `checkpoints` folder, on a
filesystem the workers share with the driver), so its result is the uninterrupted one."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import ray

from captioner.engines.ray_engine import connect, enter, resources

if TYPE_CHECKING:
    import keras

    from captioner.training.fit import FitResult, MemberJob, TrainData

__all__ = ["RETRIES", "train_members"]

RETRIES = 3


def _fit_member(cwd: str, job: MemberJob, data: TrainData, threads: int, verbose: int | str):
    enter(cwd, threads)
    from captioner.training.fit import train_member

    model, result = train_member(job, data, None, verbose)
    return model.get_weights(), result  # weights travel; a compiled Keras model does not unpickle


def _rebuilt(job: MemberJob, weights: list[np.ndarray]) -> keras.Model:
    """The member as the local engine returns it: float32, compiled like a float32 member
    (its optimizer state, which decoding never uses, stays in the worker)."""
    from captioner.training.fit import compile_model, dtype_policy

    with dtype_policy("float32"):
        model = job.build()
    if job.precision == "float32":
        compile_model(model, job.learning_rate, job.label_smoothing)
    model.set_weights(weights)
    return model


def train_members(
    jobs: Sequence[MemberJob], data: TrainData, threads: int,
    member0_callbacks: Callable[[], list[keras.callbacks.Callback]] | None = None, verbose: int | str = 2,
) -> list[tuple[keras.Model, FitResult]]:
    """Every member as a Ray task (a fresh worker process each), in parallel as far as the
    cluster's CPUs or GPUs allow; results in member order. Member 0's epochs are then replayed
    through `member0_callbacks()` (its curves), as if it had trained here."""
    connect()
    res, _ = resources(threads)
    if "num_gpus" in res:
        res["num_gpus"] = max(1, max(job.devices for job in jobs))
    fit = ray.remote(max_calls=1, max_retries=RETRIES)(_fit_member).options(**res)
    data_ref = ray.put(data)
    cwd = os.getcwd()
    refs = [fit.remote(cwd, job, data_ref, threads, verbose) for job in jobs]
    results = [(_rebuilt(job, weights), result) for job, (weights, result) in zip(jobs, ray.get(refs))]
    if member0_callbacks and results:
        from captioner.training.fit import replay_epochs

        replay_epochs(member0_callbacks(), results[0][1].history)
    return results
