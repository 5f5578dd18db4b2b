"""Team sharing end to end, as the README's "Team workflow" shows it: a bare git repository
as `origin` and a local-directory DVC remote. Alice runs experiments and pushes them; Bob
clones, pulls one, sees the same metrics and loads the same model; Carol gets the result
Bob committed with plain `git clone` + `dvc pull`. Along the way the compare commands run."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_pipeline import TINY, copy_project, run, set_params


def model_weights(path: Path) -> list[np.ndarray]:
    from captioner.model import load_model

    return load_model(str(path)).get_weights()


def run_queue(project: Path, timeout: float = 180.0) -> None:
    """`dvc queue start` and wait until every queued experiment finished successfully."""
    run(["dvc", "queue", "start", "-j", "1"], project)
    deadline = time.monotonic() + timeout
    try:
        while re.search(r"\b(Queued|Running)\b", status := run(["dvc", "queue", "status"], project)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the queue did not finish in {timeout:.0f} s:\n{status}")
            time.sleep(2)
    finally:
        subprocess.run([sys.executable, "-m", "dvc", "queue", "stop"], cwd=project, capture_output=True)
    assert not re.search(r"\b(Failed|Revoked)\b", status), status


@pytest.mark.slow
def test_experiments_shared_through_git_and_a_dvc_remote(tmp_path: Path) -> None:
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)

    # Alice: the project on a shared git origin, with a shared DVC remote.
    alice = tmp_path / "alice"
    alice.mkdir()
    copy_project(alice)
    set_params(alice, TINY)
    run(["git", "init", "-q", "-b", "main"], alice)
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], alice)
    run(["git", "add", "-A"], alice)
    run(["git", "commit", "-qm", "tiny project"], alice)
    run(["git", "remote", "add", "origin", str(origin)], alice)
    run(["git", "push", "-q", "origin", "main"], alice)

    # An experiment in the workspace, then one through the queue: it changes an evaluate
    # param on top of lr2's results, so only evaluate reruns (the rest comes from the cache).
    run(["dvc", "exp", "run", "-n", "lr2", "-S", "train.learning_rate=0.002"], alice)
    alice_metrics = json.loads((alice / "metrics/eval.json").read_text())
    alice_weights = model_weights(alice / "data/model/model.keras")
    run(["dvc", "plots", "show", "-o", str(tmp_path / "alice-plots")], alice)
    assert "Loss (train vs validation)" in (tmp_path / "alice-plots/index.html").read_text()
    run(["dvc", "exp", "run", "--queue", "-n", "lr2-greedy", "-S", "evaluate.beam_width=1"], alice)
    run_queue(alice)
    log = run(["dvc", "queue", "logs", "lr2-greedy"], alice)
    assert "Running stage 'evaluate'" in log and "Running stage 'train'" not in log
    run(["dvc", "exp", "push", "origin", "lr2", "lr2-greedy"], alice)

    # Bob: a fresh clone sees no experiment until he pulls them (git refs + DVC cache).
    bob = tmp_path / "bob"
    run(["git", "clone", "-q", str(origin), str(bob)], tmp_path)
    assert "lr2" not in run(["dvc", "exp", "show", "--csv"], bob)
    run(["dvc", "exp", "pull", "origin", "lr2", "lr2-greedy"], bob)
    table = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], bob)))}
    assert float(table["lr2"]["bleu4"]) == alice_metrics["bleu4"]
    assert table["lr2"]["train.learning_rate"] == "0.002" and table["lr2-greedy"]["evaluate.beam_width"] == "1"
    changed = run(["dvc", "exp", "show", "--only-changed", "--md"], bob)
    assert "evaluate.beam_width" in changed and "lr2-greedy" in changed and "model.units" not in changed
    diff = json.loads(run(["dvc", "metrics", "diff", "lr2", "lr2-greedy", "--json"], bob))
    assert diff["metrics/eval.json"]["beam_width"] == {"old": 2, "new": 1, "diff": -1}
    run(["dvc", "plots", "diff", "main", "lr2", "lr2-greedy", "-o", str(tmp_path / "plots")], bob)
    assert "BLEU by experiment" in (tmp_path / "plots/index.html").read_text()

    run(["dvc", "exp", "apply", "lr2"], bob)
    assert json.loads((bob / "metrics/eval.json").read_text()) == alice_metrics
    for got, want in zip(model_weights(bob / "data/model/model.keras"), alice_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert (bob / "data/eval/gallery.html").read_text().startswith("<!DOCTYPE html>")

    # Bob makes lr2 the team's result: commit, git push, dvc push. Carol: clone + dvc pull.
    run(["git", "add", "params.yaml", "dvc.lock", "metrics"], bob)
    run(["git", "commit", "-qm", "adopt lr2"], bob)
    run(["git", "push", "-q", "origin", "main"], bob)
    run(["dvc", "push"], bob)
    carol = tmp_path / "carol"
    run(["git", "clone", "-q", str(origin), str(carol)], tmp_path)
    run(["dvc", "pull"], carol)
    assert "up to date" in run(["dvc", "status"], carol)
    assert json.loads((carol / "metrics/eval.json").read_text()) == alice_metrics
    for got, want in zip(model_weights(carol / "data/model/model.keras"), alice_weights, strict=True):
        np.testing.assert_array_equal(got, want)
