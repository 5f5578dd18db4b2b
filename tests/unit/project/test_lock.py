"""The committed dvc.lock (and so metrics/, and the embedded figures of docs/RESULTS.md) matches the
code and params.

`dvc status` compares every stage's deps and params with the hashes recorded in dvc.lock. On a
fresh clone the data deps are simply absent (generated, or pulled from a remote), so only the
code (`src/`, `stages/`), the params and the commands are checked: any change there after the
last `make repro` means the published results are stale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CODE = ("src/", "stages/")


def stale_entries(status: dict) -> list[str]:
    """What in `dvc status --json` says the lock does not match code, params or commands."""
    stale = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed", ...
                stale.append(f"{stage}: {change}")
                continue
            for path, what in change.get("changed deps", {}).items():
                if path.startswith(CODE) or path == "params.yaml" or path.endswith(".yaml"):
                    stale.append(f"{stage}: {path} {what}")
    return stale


def test_committed_lock_is_fresh() -> None:
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc), "status", "--json"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 0, proc.stderr
    stale = stale_entries(json.loads(proc.stdout or "{}"))
    assert not stale, ("dvc.lock is stale against the code or params: run `make repro` and commit "
                       "dvc.lock and metrics/\n  " + "\n  ".join(stale))


def test_stale_entries_reads_dvc_status() -> None:
    status = {
        "clean_text": [{"changed deps": {"data/raw/scenes": "deleted"}},
                       {"changed outs": {"data/text": "not in cache"}}],
        "evaluate": [{"changed deps": {"src/captioner/datasets/text.py": "modified",
                                       "params.yaml": {"evaluate": "modified"}}}, "changed command"],
    }
    assert stale_entries(status) == ["evaluate: src/captioner/datasets/text.py modified",
                                     "evaluate: params.yaml {'evaluate': 'modified'}",
                                     "evaluate: changed command"]
