"""The Ray engine's shared part (connecting, resources, entering a worker); the stages' Ray
layers are :mod:`.ray_features`, :mod:`.ray_train` and :mod:`.ray_decode`. All run the
project's own functions in Ray workers:

- features: Ray Data streams the batches (lists of image paths) through an actor pool; each
  actor pins TensorFlow's threads, loads the backbone once and runs
  :func:`captioner.features.extract.run_batches` (the local decode + CNN) on one batch at a time. The
  results come back in input order and the driver writes shards, report and feature file
  exactly as the local engine does.
- train: each ensemble member's :func:`captioner.training.fit.train_member` is one Ray task (one
  GPU where the cluster has GPUs, else `threads` CPUs), in a fresh worker process.
- evaluate: contiguous shards of whole decoding batches are captioned by parallel tasks
  (:func:`captioner.decoding.captioner.decode_folder`); the driver scores all captions at once.

Connecting: ``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` when it is set (a
KubeRay or ``ray start --head`` cluster), else starts a local one. Workers change to the
driver's working directory when it exists there (same host, or the project on shared storage at
the same path), so the project-relative paths of images and model folders mean the same files.
"""

from __future__ import annotations

import os

import ray

__all__ = ["connect", "enter", "resources"]


def connect() -> None:
    """Join the cluster at ``RAY_ADDRESS``, or start a local one (no dashboard), once."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True)


def resources(threads: int) -> tuple[dict[str, float], int]:
    """Per-worker resources (one GPU where the cluster has GPUs, else `threads` CPUs) and how
    many such workers the cluster holds at once."""
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if gpus:
        return {"num_cpus": 1, "num_gpus": 1}, gpus
    return {"num_cpus": threads}, max(1, int(total.get("CPU", 1) // threads))


def enter(cwd: str, threads: int) -> None:
    """In a worker: the driver's working directory (when it exists here), quiet TensorFlow,
    pinned thread pools (as the local engine pins them: float sums depend on the count)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.path.isdir(cwd):
        os.chdir(cwd)
    from captioner.runtime.threads import pin_threads

    pin_threads(threads)
