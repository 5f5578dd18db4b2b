"""Test-only fault injection for system tests that kill a pipeline stage at a precise point.

`pause_env` gives an environment whose Python processes (through a `sitecustomize` on
PYTHONPATH) pause for good when they are about to rename a file matching a pattern into place
for the n-th time, after writing their pid to a mark file: the test then kills that process
(SIGKILL, SIGTERM) at a known moment of its work, e.g. while it writes its 3rd checkpoint.
Only the first process to get there pauses (a retried one runs on), and every matching rename
is logged, one pid a line, in `<mark>.renames` (`renames`).
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

__all__ = ["paused_pid", "pause_env", "renames"]

FAULT_HOOK = textwrap.dedent("""
    import os, re, sys, time
    _pattern = os.environ.get("CAPTIONER_FAULT_RENAME")
    if _pattern:
        _count = [0]
        def _hook(event, args):
            if event == "os.rename" and re.search(_pattern, os.fsdecode(args[1])):
                _count[0] += 1
                with open(os.environ["CAPTIONER_FAULT_MARK"] + ".renames", "a") as f:
                    f.write(f"{os.getpid()}\\n")
                mark = os.environ["CAPTIONER_FAULT_MARK"]
                if _count[0] == int(os.environ.get("CAPTIONER_FAULT_NTH", "1")) and not os.path.exists(mark):
                    with open(mark, "w") as f:  # once: a restarted process runs on
                        f.write(str(os.getpid()))
                    time.sleep(600)
        sys.addaudithook(_hook)
""")


def pause_env(tmp: Path, pattern: str, nth: int = 1) -> tuple[dict[str, str], Path]:
    """(environment, mark file): a process started with it pauses at its `nth` rename of a file
    matching `pattern` (a regex searched in the target path) and writes its pid to the mark."""
    hooks = tmp / "fault-hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(FAULT_HOOK)
    mark = tmp / f"paused-{len(list(tmp.glob('paused-*')))}.pid"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(hooks), "CAPTIONER_FAULT_MARK": str(mark),
           "CAPTIONER_FAULT_RENAME": pattern, "CAPTIONER_FAULT_NTH": str(nth)}
    return env, mark


def paused_pid(mark: Path, proc, what: str, timeout: float = 300) -> int:
    """The pid the paused process wrote to `mark`, waiting for it while `proc` (its parent) runs."""
    deadline = time.monotonic() + timeout
    while not (mark.exists() and mark.read_text()):
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended before the fault point:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: the fault point was not reached in {timeout:.0f} s")
        time.sleep(0.2)
    return int(mark.read_text())


def renames(mark: Path) -> list[int]:
    """The pid of every process rename matching the pattern, in order (the paused one included)."""
    log = Path(f"{mark}.renames")
    return [int(line) for line in log.read_text().split()] if log.exists() else []
