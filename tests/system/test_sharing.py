"""Team sharing end to end, in the order README.md ("Share with a team") and docs/TEAM.md give the commands, with
a bare git repository as `origin` and a local-directory DVC remote:

0. Alice puts the project on origin and commits the DVC remote *before* any experiment;
1. she runs the pipeline, pushes it, runs an experiment in the workspace and one through the
   queue, compares them and pushes both;
2. Bob clones, pulls the committed results and the experiments, compares, applies one, captions
   an image with its released model (weights + decoding.json + model card), adopts it, pushes
   it and tags the release with the GTO conventions (`captioner-model@v1.0.0`, `#prod#1`);
3. Carol, without the pipeline, gets just the model with `dvc artifacts get` (by version and by
   stage) and captions with it; a plain clone + `dvc pull` gives the same model.
"""

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

from tests.helpers.project import TINY, copy_project, run, set_params

IMAGE = "data/raw/scenes/Flicker8k_Dataset/scene_00000.jpg"
RELEASE_FILES = {"model.keras", "vocab.json", "meta.json", "decoding.json", "README.md", "ngrams.npz"}


def model_weights(path: Path) -> list[np.ndarray]:
    from captioner.model.build import load_model

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


def caption(model: Path, image: Path, cwd: Path) -> dict:
    """`captioner caption IMAGE --model DIR --json`: one JSON line."""
    out = run(["captioner", "caption", str(image), "--model", str(model), "--json"], cwd)  # stdout + stderr
    return json.loads([line for line in out.splitlines() if line.startswith('{"image"')][-1])


def check_release(folder: Path, weights: list[np.ndarray], decoding: dict) -> None:
    """A released model folder: the files, the decoding contract, the card, the same weights."""
    assert RELEASE_FILES <= {p.name for p in folder.iterdir()}, sorted(p.name for p in folder.iterdir())
    assert json.loads((folder / "decoding.json").read_text()) == decoding
    assert json.loads((folder / "meta.json").read_text())["dataset"] == "scenes"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "dataset: scenes" in card and "Apache-2.0" in card and "Toy model" in card
    for got, want in zip(model_weights(folder / "model.keras"), weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_team_workflow_in_readme_order(tmp_path: Path) -> None:
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)

    # Alice starts the project on origin.
    alice = tmp_path / "alice"
    alice.mkdir()
    copy_project(alice)
    set_params(alice, TINY)
    run(["git", "init", "-q", "-b", "main"], alice)
    run(["git", "add", "-A"], alice)
    run(["git", "commit", "-qm", "tiny project"], alice)
    run(["git", "remote", "add", "origin", str(origin)], alice)
    run(["git", "push", "-q", "-u", "origin", "main"], alice)

    # Step 0, before any experiment: the DVC remote, committed and pushed.
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], alice)
    run(["git", "add", ".dvc/config"], alice)
    run(["git", "commit", "-qm", "DVC remote"], alice)
    run(["git", "push", "-q"], alice)

    # Run, commit and share the results.
    run(["dvc", "repro"], alice)
    run(["git", "add", "dvc.lock", "metrics"], alice)
    run(["git", "commit", "-qm", "baseline"], alice)
    run(["git", "push", "-q"], alice)
    run(["dvc", "push"], alice)

    # Change a param: one experiment in the workspace, one through the queue (an evaluate
    # param on top of lr2: only evaluate and package rerun, nothing retrains).
    run(["dvc", "exp", "run", "-n", "lr2", "-S", "train.learning_rate=0.002"], alice)
    alice_eval = json.loads((alice / "metrics/eval.json").read_text())
    alice_weights = model_weights(alice / "data/model/model.keras")
    lr2_decoding = json.loads((alice / "data/release/decoding.json").read_text())
    assert lr2_decoding == {"beam_width": 2, "length_penalty": 0.0, "block_repeat_ngram": 0, "max_length": 40,
                            "rerank": "beam", "consensus_weights": "uniform"}
    run(["dvc", "exp", "run", "--queue", "-n", "lr2-greedy", "-S", "evaluate.beam_width=1"], alice)
    run_queue(alice)
    log = run(["dvc", "queue", "logs", "lr2-greedy"], alice)
    assert "Running stage 'evaluate'" in log and "Running stage 'package'" in log
    assert "Running stage 'train'" not in log
    # No progress-bar carriage returns in a log. TensorFlow >= 2.21 prints its oneDNN and CPU
    # banners at import before absl logging starts, whatever TF_CPP_MIN_LOG_LEVEL says, so they
    # are no longer ours to hide; each may appear once per stage, never per batch.
    assert "\r" not in log
    assert log.count("oneDNN custom operations") <= 2 * log.count("Running stage")

    # Compare: metrics files hold scores only; `make compare` fits a screen.
    table = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], alice))))
    run_info = {"split", "images", "images_without_features", "beam_width", "decode_seconds", "train_seconds",
                "train_words_per_s", "epochs_run", "step", "caption", "blind_baseline.caption", "human.images",
                "human.rounds"}
    assert not run_info & set(table[0]), sorted(run_info & set(table[0]))
    assert {"bleu4", "coco.cider", "best_val_loss", "best_epoch"} <= set(table[0])
    compare = run(["make", "-s", "compare"], alice)
    assert "lr2-greedy" in compare and "bleu4" in compare and "best_val_loss" in compare and "coco.cider" in compare
    assert max(map(len, compare.splitlines())) <= 160, compare
    diff = json.loads(run(["dvc", "metrics", "diff", "lr2", "lr2-greedy", "--json"], alice))
    assert all("beam_width" not in k for k in diff.get("metrics/eval.json", {})), diff
    run(["dvc", "plots", "diff", "main", "lr2", "lr2-greedy", "-o", str(tmp_path / "plots")], alice)
    page = (tmp_path / "plots/index.html").read_text()
    assert "BLEU by experiment" in page and "https://cdn" not in page and "vega-embed@" in page

    # Share the experiments.
    run(["dvc", "exp", "push", "origin", "lr2", "lr2-greedy"], alice)

    # Bob: clone, committed results, then the shared experiments.
    bob = tmp_path / "bob"
    run(["git", "clone", "-q", str(origin), str(bob)], tmp_path)
    run(["dvc", "pull"], bob)
    assert "lr2" not in run(["dvc", "exp", "show", "--csv"], bob)
    run(["dvc", "exp", "pull", "origin", "lr2", "lr2-greedy"], bob)
    rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], bob)))}
    assert float(rows["lr2"]["bleu4"]) == alice_eval["bleu4"]
    assert rows["lr2"]["train.learning_rate"] == "0.002" and rows["lr2-greedy"]["evaluate.beam_width"] == "1"
    run(["dvc", "exp", "apply", "lr2"], bob)
    assert json.loads((bob / "metrics/eval.json").read_text()) == alice_eval
    assert "url = " in (bob / ".dvc/config").read_text()  # the remote survives the apply
    check_release(bob / "data/release", alice_weights, lr2_decoding)
    bob_caption = caption(bob / "data/release", bob / IMAGE, bob)
    alice_caption = caption(alice / "data/release", alice / IMAGE, alice)  # the same model, shared
    assert (bob_caption["caption"], bob_caption["score"]) == (alice_caption["caption"], alice_caption["score"])
    assert len(bob_caption["caption"].split()) >= 3 and bob_caption["score"] < 0

    # Bob adopts lr2 and publishes it as the team's model: git + DVC remote + registry tags.
    run(["git", "add", "params.yaml", "dvc.lock", "metrics"], bob)
    run(["git", "commit", "-qm", "adopt lr2"], bob)
    run(["git", "push", "-q"], bob)
    run(["dvc", "push"], bob)
    run(["git", "tag", "-a", "captioner-model@v1.0.0", "-m", "lr2"], bob)
    run(["git", "tag", "-a", "captioner-model#prod#1", "-m", "promote v1.0.0 to prod"], bob)
    run(["git", "push", "-q", "origin", "captioner-model@v1.0.0", "captioner-model#prod#1"], bob)

    # Carol has no pipeline: just the model, by version and by stage, from the DVC remote.
    carol = tmp_path / "carol"
    carol.mkdir()
    run(["dvc", "artifacts", "get", str(origin), "captioner-model", "--rev", "v1.0.0", "-o", "model"], carol)
    check_release(carol / "model", alice_weights, lr2_decoding)
    assert caption(carol / "model", bob / IMAGE, carol) == {**bob_caption, "image": str(bob / IMAGE)}
    run(["dvc", "artifacts", "get", str(origin), "captioner-model", "--stage", "prod", "-o", "prod"], carol)
    assert (carol / "prod/model.keras").read_bytes() == (carol / "model/model.keras").read_bytes()

    # ... and a plain clone + `dvc pull` has the same results.
    clone = tmp_path / "carol-clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    assert "up to date" in run(["dvc", "status"], clone)
    assert json.loads((clone / "metrics/eval.json").read_text()) == alice_eval
