"""The install sets against PyPI (uv dry runs, nothing downloaded): the locks are what `make lock`
writes, and each flavour's set resolves for its platforms."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.install import PLATFORMS, locked_for
from tests.helpers.project import REPO, require

def uv() -> str:
    exe = Path(sys.executable).with_name("uv")
    found = str(exe) if exe.exists() else shutil.which("uv")
    require(found is not None, "uv (make install puts it in .venv/bin)")
    return str(found)



def run_uv(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([uv(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)



@pytest.mark.network
@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_lock_is_in_sync_with_pyproject(tmp_path: Path, flavour: str) -> None:
    """`make lock` would write the committed file again (its pins are kept as preferences; a
    changed requirement they no longer satisfy, or a new one, changes the output)."""
    test = tmp_path / f"{flavour}-test.lock"
    shutil.copy(REPO / f"requirements/{flavour}-test.lock", test)
    r = run_uv("pip", "compile", "-q", "--universal", "--python-version", "3.11", "pyproject.toml",
               "--custom-compile-command", "make lock", "--extra", flavour, "--extra", "serve", "--extra", "ray",
               "--extra", "test", "-o", str(test))
    assert r.returncode == 0, r.stderr
    base = tmp_path / f"{flavour}.lock"
    shutil.copy(REPO / f"requirements/{flavour}.lock", base)
    # the pipeline's set is compiled against the committed test set, as `make lock` does
    r = run_uv("pip", "compile", "-q", "--universal", "--python-version", "3.11", "pyproject.toml",
               "--custom-compile-command", "make lock", "--extra", flavour, "--extra", "serve",
               "-c", f"requirements/{flavour}-test.lock", "-o", str(base))
    assert r.returncode == 0, r.stderr
    for out in (test, base):
        assert out.read_text() == (REPO / f"requirements/{out.name}").read_text(), \
            f"requirements/{out.name} is stale: run `make lock` and commit it"


def dry_install(flavour: str, platform: str, tmp_path: Path, wheels: list[str]) -> subprocess.CompletedProcess:
    """Would `uv pip sync` of the lock install on `platform`? Each of `wheels` must come as a
    wheel for it (the rest may be sdists, as antlr4-python3-runtime is)."""
    only = [a for name in wheels for a in ("--only-binary", name)]
    return run_uv("pip", "install", "--dry-run", "--no-deps", "--target", str(tmp_path / "t"),
                  "--python-version", "3.11", "--python-platform", PLATFORMS[platform][1], *only,
                  "-r", str(REPO / f"requirements/{flavour}.lock"))



@pytest.mark.network
def test_gpu_set_resolves_for_linux_x86_64(tmp_path: Path) -> None:
    """The `make install TF=gpu` set: tensorflow plus the CUDA/cuDNN wheels, all present on PyPI
    for Linux x86_64 (what `pip install --dry-run` would check; nothing is downloaded)."""
    pins = locked_for("gpu", "linux-x86_64")
    cuda = sorted(n for n in pins if n.startswith("nvidia-"))
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12"} <= set(cuda)
    r = dry_install("gpu", "linux-x86_64", tmp_path, ["tensorflow", *cuda])
    assert r.returncode == 0, r.stderr
    assert f"+ tensorflow=={pins['tensorflow']}" in r.stderr and "tensorflow-cpu" not in r.stderr



@pytest.mark.network
@pytest.mark.parametrize("platform", ["macos-arm64", "linux-x86_64"])
def test_cpu_set_resolves_and_macos_gets_tensorflow(tmp_path: Path, platform: str) -> None:
    r = dry_install("cpu", platform, tmp_path, ["tensorflow", "tensorflow-cpu"])
    assert r.returncode == 0, r.stderr
    flavour = "tensorflow" if platform == "macos-arm64" else "tensorflow-cpu"
    assert f"+ {flavour}==" in r.stderr and len(re.findall(r"\+ tensorflow(-cpu)?==", r.stderr)) == 1



@pytest.mark.network
def test_tensorflow_cpu_has_no_macos_arm64_wheel(tmp_path: Path) -> None:
    """Why the markers exist: the locked tensorflow-cpu cannot install on Apple silicon."""
    version = locked_for("cpu", "linux-x86_64")["tensorflow-cpu"]
    (tmp_path / "r.txt").write_text(f"tensorflow-cpu=={version}\n")
    r = run_uv("pip", "install", "--dry-run", "--no-deps", "--target", str(tmp_path / "t"),
               "--python-version", "3.11", "--python-platform", "aarch64-apple-darwin",
               "--only-binary", ":all:", "-r", str(tmp_path / "r.txt"))
    assert r.returncode != 0 and "no wheels with a matching platform tag" in " ".join(r.stderr.split()), r.stderr

