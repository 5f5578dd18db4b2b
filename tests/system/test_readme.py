"""The README's own commands, run as a newcomer runs them: `make repro` in a fresh copy of the
project with no git repository (the Makefile makes one) and no virtual environment (it makes
one), then the "what next" commands: the offline plots, captioning a photo and exporting the
model. Each command is checked to stand in README.md as written, so the README cannot drift
from what works."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.project import REPO, copy_project

# The commands as README.md writes them; `photo.jpg` is made in the project first.
README_COMMANDS = ["make repro", "make plots", "captioner caption photo.jpg", "captioner export exported/"]


def sh(cmd: str, cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"`{cmd}` failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def test_the_readme_commands_run_as_written(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for cmd in README_COMMANDS:
        assert cmd in readme, f"README.md no longer shows `{cmd}`: update the README or this test"
    project = tmp_path / "fresh"
    project.mkdir()
    copy_project(project)  # the tracked files only: no .git, no .venv, no data
    assert not (project / ".git").exists() and not (project / ".venv").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")

    proc = subprocess.run("make repro", shell=True, cwd=project, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"make repro failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "created a git repository" in proc.stdout and (project / ".venv/bin/captioner").is_file()
    no_tests = subprocess.run([project / ".venv/bin/python", "-c", "import pytest"], capture_output=True)
    assert no_tests.returncode != 0, "make repro installed test tools"  # requirements/cpu.lock only
    # The last screen is the run's summary (DVC's own notices may land among its lines).
    summary = subprocess.run([project / ".venv/bin/python", "-m", "captioner.app.summary"], cwd=project, env=env,
                             capture_output=True, text=True).stdout.splitlines()
    assert summary[0].startswith("captioner: dev split, 150 images") and len(summary) == 9, summary
    assert max(map(len, summary)) <= 100 and any("data/eval/gallery.html" in line for line in summary)
    printed = iter(proc.stdout.splitlines()[-20:])
    assert all(line in printed for line in summary), proc.stdout[-3000:]  # in order, at the end of make repro
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert metrics["coco"]["cider"] > 2 * metrics["blind_baseline"]["coco"]["cider"]
    assert (project / "data/release/decoding.json").is_file() and (project / "data/eval/gallery.html").is_file()

    # What next, with the project's venv on PATH as the README says (`source .venv/bin/activate`).
    env["PATH"] = f"{project / '.venv/bin'}{os.pathsep}{env['PATH']}"
    out = sh("make plots", project, env, timeout=300)
    assert (project / "dvc_plots/index.html").is_file() and "works offline" in out
    scene = sorted((project / "data/raw/scenes/Flicker8k_Dataset").glob("*.jpg"))[0]
    Image.open(scene).save(project / "photo.jpg")
    caption = sh("captioner caption photo.jpg", project, env, timeout=300)
    assert caption.startswith("photo.jpg\t") and len(caption.split("\t")[1].split()) >= 3, caption
    out = sh("captioner export exported/", project, env, timeout=600)
    assert "exported data/release -> exported" in out
    assert json.loads((project / "exported/decoding.json").read_text()) == json.loads(
        (project / "data/release/decoding.json").read_text())


@pytest.fixture(autouse=True)
def _needs_make_and_python() -> None:
    for tool in ("make", "python3"):
        assert subprocess.run(["which", tool], capture_output=True).returncode == 0, f"{tool} is needed"


def test_a_model_user_installs_captioner_from_git_and_captions_with_a_shared_model(workspace, tmp_path: Path) -> None:
    """The model users' route (README "Caption your photos", docs/USE.md): a fresh venv, `pip
    install "captioner[cpu] @ git+<url>"` (here with uv, pinned by the lock so that the test
    installs from the package cache), then `captioner caption` with a released model folder;
    the same caption as the pipeline's own venv gives."""
    import sys

    uv = Path(sys.executable).with_name("uv")
    assert uv.is_file(), "uv (make install puts it in .venv/bin)"
    assert 'pip install "captioner[cpu] @ git+' in (REPO / "README.md").read_text(encoding="utf-8")
    venv = tmp_path / "user-venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    sh(f"{uv} venv -q --python {sys.executable} {venv}", tmp_path, env, timeout=300)
    sh(f"{uv} pip install -q --python {venv / 'bin/python'} -c {REPO / 'requirements/cpu.lock'} "
       f"'captioner[cpu] @ git+file://{workspace.path}'", tmp_path, env, timeout=900)
    assert subprocess.run([venv / "bin/python", "-c", "import pytest"], capture_output=True).returncode != 0  # no test tools
    model = workspace.path / "data/release"
    scene = sorted((workspace.path / "data/raw/scenes/Flicker8k_Dataset").glob("*.jpg"))[0]
    Image.open(scene).save(tmp_path / "photo.jpg")
    theirs = sh(f"{venv / 'bin/captioner'} caption photo.jpg --model {model} --json", tmp_path, env, timeout=300)
    ours = sh(f"{Path(sys.executable).with_name('captioner')} caption photo.jpg --model {model} --json",
              tmp_path, env, timeout=300)
    line = [json.loads(x) for x in theirs.splitlines() if x.startswith("{")]
    assert line == [json.loads(x) for x in ours.splitlines() if x.startswith("{")] and len(line[0]["caption"].split()) >= 3
