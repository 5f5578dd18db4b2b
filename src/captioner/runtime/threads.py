"""TensorFlow's thread pools, pinned: float sums depend on the thread count."""

from __future__ import annotations

import os
import sys

__all__ = ["pin_threads"]


def pin_threads(threads: int) -> None:
    """Pin TensorFlow's intra- and inter-op thread pools to `threads` (before TF runs any op).

    Float sums split over threads are added in another order with another thread count, so a
    process that must reproduce another's bytes (a Ray worker, where Ray also sets
    OMP_NUM_THREADS) pins the same count. Once TensorFlow has started (only in a process that
    ran TensorFlow before, e.g. a test or a notebook: never in a stage), the pools cannot
    change: a different count is then reported on stderr and the float sums may differ in the
    last bits from a process pinned to `threads`.
    """
    import tensorflow as tf

    th = tf.config.threading
    for get, set_ in ((th.get_intra_op_parallelism_threads, th.set_intra_op_parallelism_threads),
                      (th.get_inter_op_parallelism_threads, th.set_inter_op_parallelism_threads)):
        if get() == threads:
            continue
        try:
            set_(threads)
        except RuntimeError:
            effective = get() or len(os.sched_getaffinity(0))  # 0: TensorFlow's default, one per CPU
            if effective != threads:
                print(f"warning: TensorFlow already runs with {effective} threads in this process; "
                      f"the `threads` param ({threads}) cannot apply, so float sums may differ in the "
                      "last bits from a process pinned to it", file=sys.stderr)
                return
