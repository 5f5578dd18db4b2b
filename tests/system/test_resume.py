"""`train` and `scst` interrupted and resumed through `dvc repro`: SIGTERM stops `train` with one
line saying where the rerun resumes; SIGKILL in the middle of train's second member and of
scst's second member; each rerun resumes from the last finished epoch, finished members are not
trained again, and the model files' weights and the metrics are those of an uninterrupted run,
bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

from tests.helpers.faults import pause_env, paused_pid
from tests.helpers.project import run, set_params
from tests.helpers.workspace import clone_workspace

PARAMS = {"train": {"ensemble": 2}, "scst": {"epochs": 3, "patience": 3}}


def _weights(folder: Path) -> dict[str, bytes]:
    """Each member's weights file inside its .keras archive (the archive's metadata holds a date)."""
    out = {}
    for member in sorted(folder.glob("*.keras")):
        with zipfile.ZipFile(member) as z:
            out[member.name] = z.read("model.weights.h5")
    return out


def _untimed(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if "seconds" not in k and not k.endswith("_per_s")}


def _results(project: Path) -> dict:
    return {
        "model_xe": _weights(project / "data/model_xe"), "model": _weights(project / "data/model"),
        **{m: _untimed(project / m) for m in ("metrics/train/metrics.json", "metrics/scst/metrics.json",
                                              "metrics/eval.json")},
    }


def _interrupt(project: Path, tmp: Path, cmd: list[str], pattern: str, nth: int, sig: int) -> tuple[int, str, float]:
    """Run `cmd`, pause its stage at the `nth` rename matching `pattern`, send `sig`: (exit status, output, seconds to exit)."""
    env, mark = pause_env(tmp, pattern, nth)
    dvc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid = paused_pid(mark, dvc, " ".join(cmd))
    sent = time.monotonic()
    os.kill(pid, sig)
    out, _ = dvc.communicate(timeout=300)
    return dvc.returncode, out, time.monotonic() - sent


def test_train_and_scst_resume_bit_for_bit_after_sigterm_and_sigkill(workspace, tmp_path: Path) -> None:
    project = clone_workspace(workspace, tmp_path / "proj")
    set_params(project, PARAMS)
    run(["dvc", "repro", "evaluate"], project)
    reference = _results(project)
    xe_partial, scst_partial = project / "data/model_xe.partial", project / "data/model.partial"
    assert not xe_partial.exists() and not scst_partial.exists()

    # 1. SIGTERM while member 2 writes its 3rd epoch's checkpoint: one line says what resumes.
    status, out, seconds = _interrupt(project, tmp_path, ["dvc", "repro", "-f", "-s", "train"],
                                      r"model_xe\.partial/member-1\.npz$", 3, signal.SIGTERM)
    assert status != 0 and seconds < 60, out
    assert ("train: stopped; the next `dvc repro` resumes from data/model_xe.partial: member 2 of 2 resumes "
            "at epoch 3 of 30; member 1 of 2 already finished") in out, out

    # 2. SIGKILL (no chance to say anything) at the resumed member's 2nd checkpoint: epoch 4's.
    status, out, _ = _interrupt(project, tmp_path, ["dvc", "repro", "-s", "train"],
                                r"model_xe\.partial/member-1\.npz$", 2, signal.SIGKILL)
    assert status != 0 and "train: member 2 of 2 resumes at epoch 3 of 30; member 1 of 2 already finished" in out
    kept = sorted(p.name for p in xe_partial.iterdir() if not p.name.startswith("."))  # .tmp: the killed write
    assert kept == ["fingerprint.json", "member-0.npz", "member-1.npz"]

    out = run(["dvc", "repro", "-s", "train"], project)
    assert "train: member 2 of 2 resumes at epoch 4 of 30; member 1 of 2 already finished" in out, out
    assert not xe_partial.exists()
    assert _weights(project / "data/model_xe") == reference["model_xe"]
    assert _untimed(project / "metrics/train/metrics.json") == reference["metrics/train/metrics.json"]

    # 3. scst: SIGKILL while member 2 writes its 2nd epoch's checkpoint (its epoch 2 is lost; member 1's is kept).
    status, out, _ = _interrupt(project, tmp_path, ["dvc", "repro", "-f", "-s", "scst"],
                                r"model\.partial/member-1\.npz$", 2, signal.SIGKILL)
    assert status != 0, out
    out = run(["dvc", "repro", "evaluate"], project)
    assert "scst: resumes at epoch 2 of 3" in out, out  # member 1, saved at epoch 2, is not trained again
    assert not scst_partial.exists()
    assert _results(project) == reference


def test_changed_params_discard_the_checkpoints(workspace, tmp_path: Path) -> None:
    """A checkpoint made with other params is never resumed from: the stage says so and starts afresh."""
    project = clone_workspace(workspace, tmp_path / "proj")
    set_params(project, PARAMS)
    status, out, _ = _interrupt(project, tmp_path, ["dvc", "repro", "-s", "train"],
                                r"model_xe\.partial/member-0\.npz$", 3, signal.SIGKILL)
    assert status != 0
    set_params(project, {"train": {"learning_rate": 0.005}})
    out = run(["dvc", "repro", "-s", "train"], project)
    assert ("train: discarding the checkpoints in data/model_xe.partial, made with another "
            "params.train.learning_rate") in out, out
    assert "resumes at" not in out
