"""train.precision: the Keras dtype policy a run trains in, and the devices it runs on.

`auto` is decided from what this machine has, never assumed: ``mixed_float16`` when
TensorFlow sees a GPU, ``mixed_bfloat16`` on a CPU whose flags show bfloat16 arithmetic
(AVX512_BF16 or AMX-BF16, Linux /proc/cpuinfo), ``float32`` otherwise (other CPUs emulate
bfloat16 and run it slower than float32). The explicit names are used as given.

TensorFlow is imported only by the helpers that ask it about devices, so `resolve_precision`
with `gpus` and `cpu_flags` given is pure.
"""

from __future__ import annotations

import os
import platform
import warnings
from importlib import metadata
from pathlib import Path

__all__ = [
    "BF16_FLAGS", "CPUINFO", "PRECISIONS", "cpu_flags", "describe_devices", "gpu_count",
    "resolve_precision",
]

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# /proc/cpuinfo flags that mean bfloat16 arithmetic in hardware (oneDNN uses either).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(name: str, cpuinfo: Path = CPUINFO) -> str:
    """The value of the first `name : value` line of /proc/cpuinfo, or "" (no file, no line)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags, lower case: /proc/cpuinfo's `flags` (x86) or `Features` (ARM)
    line on Linux; an empty set elsewhere (macOS, Windows), which makes `auto` pick float32."""
    line = _cpuinfo_field("flags", cpuinfo) or _cpuinfo_field("Features", cpuinfo)
    return set(line.lower().split())


def gpu_count() -> int:
    """GPUs TensorFlow can use here (0 with the tensorflow-cpu wheel, or a CUDA build without
    a usable driver)."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def resolve_precision(name: str, gpus: int | None = None, cpu_flags: set[str] | None = None) -> str:
    """The Keras dtype policy for `train.precision` `name` on this machine (`gpus` GPUs and a CPU
    with `cpu_flags`; each is detected when None, and only when `name` needs it).

    auto -> mixed_float16 with a GPU, mixed_bfloat16 on a CPU with AVX512_BF16 or AMX-BF16,
    float32 otherwise. An explicit name is returned as it is; mixed_float16 without a GPU warns
    (CPUs emulate float16: correct but many times slower), but is not refused, since with
    `train.engine: ray` the process that resolves may not be the one that trains.
    """
    if name not in PRECISIONS:
        raise ValueError(f"train.precision: {name!r} is not one of {', '.join(PRECISIONS)}")
    if name in ("float32", "mixed_bfloat16"):
        return name
    if gpus is None:
        gpus = gpu_count()
    if name == "mixed_float16":
        if gpus == 0:
            warnings.warn("train.precision mixed_float16 without a GPU: CPUs emulate float16, "
                          "expect a much slower run (auto picks the best for this machine)",
                          RuntimeWarning, stacklevel=2)
        return name
    if gpus > 0:
        return "mixed_float16"
    flags = _detected_flags() if cpu_flags is None else cpu_flags
    return "mixed_bfloat16" if flags & BF16_FLAGS else "float32"


def _detected_flags() -> set[str]:
    return cpu_flags()


def _tensorflow_build() -> str:
    """`TensorFlow 2.21.0 (tensorflow-cpu)`: the version and the wheel installed."""
    import tensorflow as tf

    dists = [d for d in ("tensorflow-cpu", "tensorflow") if _installed(d)]
    return f"TensorFlow {tf.__version__} ({', '.join(dists) or 'unknown wheel'})"


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def describe_devices() -> str:
    """One line for train's log: the GPUs TensorFlow sees (with names), the CPU (model, cores
    this process may use, bfloat16 flags) and the TensorFlow build."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001 - a name is nice to have, never worth failing a run
            details = {}
        names.append(f"{gpu.name.removeprefix('/physical_device:')} {details.get('device_name', '')}".strip())
    gpu_part = f"{len(gpus)} GPU(s): {', '.join(names)}" if gpus else "no GPU"
    model = _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 0
    bf16 = sorted(cpu_flags() & BF16_FLAGS)
    bf16_part = f"bfloat16 flags {'+'.join(bf16)}" if bf16 else "no AVX512_BF16/AMX"
    return f"devices: {gpu_part}; CPU {model}, {cores} core(s), {bf16_part}; {_tensorflow_build()}"
