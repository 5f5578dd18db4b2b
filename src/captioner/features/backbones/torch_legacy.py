"""Read a legacy (pre-1.6, non-zip) PyTorch checkpoint into numpy arrays, without torch.

Layout of a legacy file, as written by ``torch.save(..., _use_new_zipfile_serialization=False)``:

1. pickle: magic number ``0x1950a86a20f9469cfc6c``
2. pickle: protocol version (``1001``)
3. pickle: sys_info dict (``little_endian``, ``type_sizes``, ...)
4. pickle: the object itself; storages are persistent ids
   ``('storage', storage_type, key, location, numel, view_metadata)`` and tensors are
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` calls
5. pickle: list of storage keys, in the order their data follows
6. for each key: int64 element count, then the raw elements

Every pickle is read by a restricted unpickler that resolves only the few globals a
state dict needs (see :data:`ALLOWED_GLOBALS`), each time as a fresh stand-in (so a crafted
file cannot alter this module's objects); anything else raises
:class:`UnsafeCheckpointError` before it can run. Tensors must have non-negative sizes,
strides and offsets, lie inside their storage and hold no more elements than it has (a
zero-stride tensor must not expand a few bytes of file into terabytes).
"""

from __future__ import annotations

import math
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "ALLOWED_GLOBALS", "LEGACY_MAGIC", "LEGACY_PROTOCOL", "STORAGE_DTYPES", "CheckpointError",
    "UnsafeCheckpointError", "read_legacy_checkpoint_object", "read_state_dict",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")}
    | {("torch", name) for name in STORAGE_DTYPES}
)


class CheckpointError(ValueError):
    """The file is not a well-formed legacy torch checkpoint."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint asks for a global outside :data:`ALLOWED_GLOBALS`."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only its name matters (not callable)."""

    name: str


@dataclass
class _Storage:
    """A storage whose data is filled in after the main pickle has been read."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _StorageView:
    """A legacy storage view: ``numel`` elements of ``root`` starting at ``offset``."""

    root: _Storage
    offset: int
    numel: int


@dataclass
class _PendingTensor:
    """A tensor to materialise once storage data is known."""

    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    extra: tuple[Any, ...] = field(default=())


def _rebuild_tensor_v2(
    storage: Any, storage_offset: int, size: Any, stride: Any, *extra: Any
) -> _PendingTensor:
    """Restricted stand-in for ``torch._utils._rebuild_tensor_v2``."""
    if not isinstance(storage, _Storage | _StorageView):
        raise pickle.UnpicklingError(f"tensor storage is {type(storage).__name__}, not a storage")
    return _PendingTensor(
        storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride), extra
    )


def _text(value: str | bytes) -> str:
    """Decode ascii bytes found in Python-2-era pickles; pass strings through."""
    return value.decode("ascii") if isinstance(value, bytes) else value


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only :data:`ALLOWED_GLOBALS`, with torch persistent ids as storages."""

    def __init__(self, file: IO[bytes], source: str, storages: dict[str, _Storage]) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"{self._source}: refusing global {module}.{name} (not a tensor/state-dict type)"
            )
        # A fresh object per call: a BUILD opcode may set attributes on what it gets.
        if module == "collections":

            def ordered_dict(*args: Any, **kwargs: Any) -> OrderedDict:
                return OrderedDict(*args, **kwargs)

            return ordered_dict
        if module == "torch._utils":

            def rebuild_tensor_v2(*args: Any) -> _PendingTensor:
                return _rebuild_tensor_v2(*args)

            return rebuild_tensor_v2
        return _StorageType(name)

    def persistent_load(self, pid: Any) -> _Storage | _StorageView:
        if not (isinstance(pid, tuple) and len(pid) == 6 and _text(pid[0]) == "storage"):
            raise CheckpointError(f"{self._source}: unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view = pid
        dtype = None
        if isinstance(storage_type, _StorageType) and isinstance(storage_type.name, str):
            dtype = STORAGE_DTYPES.get(storage_type.name)  # the name, as a BUILD may have changed it
        if dtype is None:
            raise CheckpointError(
                f"{self._source}: storage type {storage_type!r:.80} is not a torch storage class"
            )
        key = _text(key)
        if int(numel) < 0:
            raise CheckpointError(f"{self._source}: storage {key} has a negative element count {numel}")
        root = self._storages.setdefault(key, _Storage(key, dtype, int(numel)))
        if view is None:
            return root
        _view_key, offset, view_numel = view
        if int(offset) < 0 or int(view_numel) < 0 or int(offset) + int(view_numel) > root.numel:
            raise CheckpointError(f"{self._source}: view ({offset}, {view_numel}) lies outside storage {key}")
        return _StorageView(root, int(offset), int(view_numel))


def _load_pickle(f: IO[bytes], source: str, storages: dict[str, _Storage], what: str) -> Any:
    """Load one pickle from `f`, naming the file and the section on failure."""
    try:
        return _RestrictedUnpickler(f, source, storages).load()
    except (UnsafeCheckpointError, CheckpointError):
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
    ) as e:
        raise CheckpointError(f"{source}: cannot read the {what} pickle ({type(e).__name__}: {e})") from e


def _remaining(f: IO[bytes]) -> int:
    """Bytes left in seekable `f` after the current position."""
    pos = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(pos)
    return end - pos


def _read_storage_data(f: IO[bytes], source: str, storage: _Storage) -> None:
    """Read one storage's int64 element count and raw little-endian data into `storage.data`."""
    header = f.read(8)
    if len(header) != 8:
        raise CheckpointError(f"{source}: truncated before the data of storage {storage.key}")
    numel = int(np.frombuffer(header, dtype="<i8")[0])
    if numel != storage.numel:
        raise CheckpointError(
            f"{source}: storage {storage.key} has {numel} elements on disk, {storage.numel} expected"
        )
    nbytes = numel * storage.dtype.itemsize
    if nbytes > _remaining(f):  # checked first: a forged count must not make us allocate
        raise CheckpointError(f"{source}: truncated inside the data of storage {storage.key}")
    raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise CheckpointError(f"{source}: truncated inside the data of storage {storage.key}")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _materialise(tensor: _PendingTensor, source: str) -> np.ndarray:
    """Turn a pending tensor into an owned, C-contiguous numpy array."""
    view = tensor.storage
    if isinstance(view, _StorageView):
        base, start, numel = view.root, view.offset, view.numel
    else:
        base, start, numel = view, 0, view.numel
    if base.data is None:
        raise CheckpointError(f"{source}: storage {base.key} has no data section")
    flat = base.data[start : start + numel]
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    what = f"tensor of size {size}, stride {stride} and offset {offset} in storage {base.key}"
    if len(stride) != len(size):
        raise CheckpointError(f"{source}: {what}: {len(size)} sizes but {len(stride)} strides")
    if min((offset, *size, *stride)) < 0:
        raise CheckpointError(f"{source}: {what}: negative size, stride or offset")
    count = math.prod(size)
    if count > len(flat):  # bounds the allocation by the data actually in the file
        raise CheckpointError(f"{source}: {what}: {count} elements, more than the {len(flat)} of its storage")
    if count == 0:
        try:
            return np.zeros(size, dtype=base.dtype)
        except ValueError as e:  # a dimension beyond what numpy can index
            raise CheckpointError(f"{source}: {what}: {e}") from None
    if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= len(flat):
        raise CheckpointError(f"{source}: {what}: lies outside its storage")
    if not size:
        return flat[offset : offset + 1].reshape(()).copy()
    item = base.dtype.itemsize
    strides = [s * item if n > 1 else 0 for n, s in zip(size, stride)]  # a length-1 axis's is unused
    return np.ascontiguousarray(np.lib.stride_tricks.as_strided(flat[offset:], size, strides, writeable=False))


def _resolve(obj: Any, source: str) -> Any:
    """Replace pending tensors inside (nested) dicts, lists and tuples by numpy arrays."""
    if isinstance(obj, _PendingTensor):
        return _materialise(obj, source)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, source)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v, source) for v in obj)
    return obj


def read_legacy_checkpoint_object(f: IO[bytes], source: str) -> Any:
    """Read the legacy checkpoint in `f` (named `source` in errors); tensors become numpy arrays."""
    storages: dict[str, _Storage] = {}
    magic = _load_pickle(f, source, storages, "magic number")
    if magic != LEGACY_MAGIC:
        raise CheckpointError(
            f"{source}: not a legacy torch checkpoint (bad magic number; zip checkpoints are not supported)"
        )
    protocol = _load_pickle(f, source, storages, "protocol version")
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"{source}: unsupported legacy protocol version {protocol!r}")
    sys_info = _load_pickle(f, source, storages, "sys_info")
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
        raise CheckpointError(f"{source}: big-endian checkpoints are not supported")
    obj = _load_pickle(f, source, storages, "main")
    keys = _load_pickle(f, source, storages, "storage keys")
    if not isinstance(keys, list):
        raise CheckpointError(f"{source}: storage key list is a {type(keys).__name__}")
    for key in map(_text, keys):
        if key not in storages:
            raise CheckpointError(f"{source}: data for unknown storage {key}")
        _read_storage_data(f, source, storages[key])
    return _resolve(obj, source)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a legacy torch state-dict checkpoint at `path` as ``{name: array}`` (torch not needed)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            obj = read_legacy_checkpoint_object(f, str(p))
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read checkpoint ({e.strerror or e})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: checkpoint holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))]
    if bad:
        raise CheckpointError(f"{p}: state dict entries that are not tensors: {bad[:5]}")
    return dict(obj)
