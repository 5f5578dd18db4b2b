"""What every pipeline stage does around its `main`: SIGTERM unwinds like Ctrl-C, and the
pipeline's own errors end the process in one line naming the file or key.

A stage script is `main()` plus ``run_stage("<name>", main)``; stages/_stage.py, imported first
by every script, checks the Python and quietens TensorFlow before anything heavy loads.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["exit_on_sigterm", "reported_errors", "run_stage"]

STAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit in the main thread, so `finally` blocks (and the removal
    of temporaries) run, as they do for Ctrl-C; Python's default is to die on the spot."""
    signal.signal(signal.SIGTERM, _raise_exit)


@contextlib.contextmanager
def reported_errors(stage: str, kinds: tuple[type[BaseException], ...] = STAGE_ERRORS) -> Iterator[None]:
    """Exit with one line ``<stage>: error: <message>`` (status 1) on `kinds` of errors.

    The pipeline's errors name the file or key and the problem, so the traceback is noise to
    a user; set ``CAPTIONER_TRACEBACK=1`` to get it anyway.
    """
    try:
        yield
    except kinds as e:
        if os.environ.get("CAPTIONER_TRACEBACK"):
            raise
        raise SystemExit(f"{stage}: error: {e}\n(set CAPTIONER_TRACEBACK=1 for the traceback)") from None


def run_stage(name: str, main: Callable[[], object], errors: tuple[type[BaseException], ...] = STAGE_ERRORS) -> None:
    """Run a stage's `main` with SIGTERM turned into SystemExit and `errors` reported in one
    line; Ctrl-C ends it with status 130 and no traceback (what it stopped is `main`'s to say)."""
    exit_on_sigterm()
    try:
        with reported_errors(name, errors):
            main()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
