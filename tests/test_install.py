"""The install: TensorFlow in one of two extras (cpu | gpu), pinned by requirements/*.lock.

Offline: the markers pick exactly one TensorFlow flavour per platform (tensorflow, not
tensorflow-cpu, on macOS arm64), the locks agree with the extras and the Makefile's uv.
With PyPI (`network`, uv from `make install`): the locks are what `make lock` writes from
pyproject.toml today, and every locked TensorFlow/CUDA distribution has a wheel for the
platforms it is locked for, GPU set included (dry runs: nothing is installed, no GPU needed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FLAVOURS = {"tensorflow", "tensorflow-cpu"}

# marker environments (Python 3.11) for the platforms the issue names; uv's --python-platform
PLATFORMS = {
    "linux-x86_64": ({"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                      "os_name": "posix"}, "x86_64-manylinux_2_28"),
    "linux-aarch64": ({"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                       "os_name": "posix"}, "aarch64-manylinux_2_28"),
    "macos-arm64": ({"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                     "os_name": "posix"}, "aarch64-apple-darwin"),
    "windows-x86_64": ({"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                        "os_name": "nt"}, "x86_64-pc-windows-msvc"),
}
ENV_311 = {"python_version": "3.11", "python_full_version": "3.11.7", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}


def env(platform: str) -> dict[str, str]:
    return {**ENV_311, **PLATFORMS[platform][0]}


def extra(name: str) -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][name]]


def picked(reqs: list[Requirement], platform: str) -> set[str]:
    return {r.name for r in reqs if r.marker is None or r.marker.evaluate(env(platform))}


def lock(flavour: str) -> dict[str, tuple[str, Marker | None]]:
    """name -> (version, marker) of requirements/<flavour>.lock."""
    pins = {}
    for line in (REPO / f"requirements/{flavour}.lock").read_text().splitlines():
        if not line or line[0] in " #":
            continue
        spec, _, marker = line.partition(";")
        name, _, version = spec.strip().partition("==")
        assert version, f"unpinned line in {flavour}.lock: {line}"
        pins[name.lower()] = (version, Marker(marker.strip()) if marker.strip() else None)
    return pins


def locked_for(flavour: str, platform: str) -> dict[str, str]:
    return {n: v for n, (v, m) in lock(flavour).items() if m is None or m.evaluate(env(platform))}


def test_tensorflow_is_only_in_the_flavour_extras() -> None:
    base = {Requirement(r).name for r in PYPROJECT["project"]["dependencies"]}
    assert not base & FLAVOURS, "TensorFlow in the base dependencies could install both flavours"
    assert {r.name for r in extra("test")}.isdisjoint(FLAVOURS)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_extra_picks_exactly_one_flavour(platform: str) -> None:
    cpu, gpu = picked(extra("cpu"), platform), picked(extra("gpu"), platform)
    assert len(cpu) == 1 and len(gpu) == 1 and gpu == {"tensorflow"}
    # tensorflow-cpu has wheels for Linux x86_64 and Windows x86_64 only (PyPI, TF 2.19-2.21)
    assert cpu == ({"tensorflow-cpu"} if platform in ("linux-x86_64", "windows-x86_64") else {"tensorflow"})
    cuda = [r for r in extra("gpu") if "and-cuda" in r.extras]
    assert [r.marker.evaluate(env(platform)) for r in cuda] == [platform.startswith("linux")]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_locks_hold_one_flavour_per_platform(platform: str) -> None:
    cpu, gpu = locked_for("cpu", platform), locked_for("gpu", platform)
    assert len(FLAVOURS & set(cpu)) == 1 and FLAVOURS & set(gpu) == {"tensorflow"}
    assert set(cpu) & FLAVOURS == picked(extra("cpu"), platform)
    assert ("nvidia-cudnn-cu12" in gpu) == platform.startswith("linux") and "nvidia-cudnn-cu12" not in cpu
    # the same versions of everything both sets hold (a GPU rerun is the CPU run's software)
    shared = set(cpu) & set(gpu)
    assert {n: cpu[n] for n in shared} == {n: gpu[n] for n in shared}
    assert len({cpu[n] for n in FLAVOURS & set(cpu)} | {gpu["tensorflow"]}) == 1


def test_this_venv_is_the_cpu_lock_or_the_gpu_lock() -> None:
    """What `make install` put here: the flavour the stamp names, at the locked version."""
    from importlib import metadata

    stamp = Path(sys.prefix) / ".installed"
    flavour = (stamp.read_text().strip() if stamp.exists() else "") or "cpu"
    installed = set()
    for dist in FLAVOURS:
        try:
            installed.add((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            pass
    here = "linux-x86_64" if sys.platform == "linux" and __import__("platform").machine() == "x86_64" else None
    if here is None:
        pytest.skip("the check names Linux x86_64's flavour")
    pins = locked_for(flavour, here)
    assert installed == {(d, pins[d]) for d in FLAVOURS & set(pins)}


def test_makefile_pins_uv_and_locks_what_pyproject_says() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^UV_VERSION := \d+\.\d+\.\d+$", makefile, re.M)
    for flavour in ("cpu", "gpu"):
        assert f"--extra {flavour} --extra test" in makefile
        assert (REPO / f"requirements/{flavour}.lock").read_text().startswith(
            "# This file was autogenerated by uv via the following command:\n#    make lock\n")


def test_stages_say_in_one_line_when_no_flavour_is_installed(monkeypatch) -> None:
    import importlib.util

    from captioner.runtime import console

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "tensorflow" else real(m, *a))
    with pytest.raises(SystemExit) as e:
        console.require_project_python()
    assert "has no TensorFlow: `make install` (CPU) or `make install TF=gpu`" in str(e.value)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ with PyPI (uv, dry runs)

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
    out = tmp_path / f"{flavour}.lock"
    shutil.copy(REPO / f"requirements/{flavour}.lock", out)
    r = run_uv("pip", "compile", "-q", "--universal", "--python-version", "3.11", "pyproject.toml",
               "--extra", flavour, "--extra", "test", "--custom-compile-command", "make lock", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text() == (REPO / f"requirements/{flavour}.lock").read_text(), \
        f"requirements/{flavour}.lock is stale: run `make lock` and commit it"


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
