"""Stage output fit for a terminal and for logs (`dvc repro` piped, `dvc queue logs`).

On a terminal nothing changes: tqdm and Keras draw their bars in place. Elsewhere tqdm's
carriage-return redraws would pile up as one endless line, so stderr is wrapped to turn each
redraw into its own line: one line per chunk of work. TensorFlow's C++ start-up banners (oneDNN
custom operations, CPU instruction notes) are silenced by setting TF_CPP_MIN_LOG_LEVEL before
TensorFlow is imported; the numerics are untouched (oneDNN stays on).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TextIO

__all__ = ["NEEDED", "LineLog", "quiet_tensorflow", "require_project_python", "setup_stage_output"]

NEEDED = ("tensorflow", "keras", "pandas", "pyarrow", "dvc")


class LineLog:
    """A text stream that writes every carriage-return redraw as a line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        lines = (self._pending + text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._pending = lines.pop()
        for line in lines:
            if line.strip():
                self._stream.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> object:  # fileno, encoding, ...
        return getattr(self._stream, name)


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ INFO/WARNING banners unless the user set a level; call before
    TensorFlow (or Keras) is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def require_project_python() -> None:
    """Exit in one line when this Python lacks the project's packages (e.g. `.venv/bin/dvc`
    run from a shell whose `python` is the system one)."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing == ["tensorflow"]:  # the project without a TensorFlow flavour (pyproject.toml extras)
        sys.exit(f"{sys.argv[0]}: {sys.executable} has no TensorFlow: `make install` (CPU) or "
                 "`make install TF=gpu`; with pip, `pip install -e '.[cpu]'` or `'.[gpu]'`")
    if missing:
        sys.exit(f"{sys.argv[0]}: {sys.executable} has no {', '.join(missing)}: activate the project's venv "
                 "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")


def setup_stage_output() -> None:
    """Check the Python, quieten TensorFlow; when stderr is not a terminal, log progress bars
    line by line. Call first in a stage script, before TensorFlow loads."""
    require_project_python()
    quiet_tensorflow()
    if not sys.stderr.isatty() and not isinstance(sys.stderr, LineLog):
        sys.stderr = LineLog(sys.stderr)  # type: ignore[assignment]
