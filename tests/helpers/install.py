"""pyproject.toml's extras and the lock files, read offline: which packages each TensorFlow
flavour pins for each platform."""

from __future__ import annotations

import tomllib

from packaging.markers import Marker
from packaging.requirements import Requirement

from tests.helpers.project import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())



FLAVOURS = {"tensorflow", "tensorflow-cpu"}



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

