"""Imported first by every stage script: a Python without the project's packages stops here in
one line (not a traceback), and TensorFlow's start-up chatter is quietened before it loads."""

import sys

try:
    from captioner.runtime.console import setup_stage_output
    from captioner.runtime.stage import run_stage
except ModuleNotFoundError as e:
    sys.exit(f"{sys.argv[0]}: {sys.executable} has no '{e.name}': activate the project's venv "
             "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")
setup_stage_output()

__all__ = ["run_stage"]
