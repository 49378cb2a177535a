"""A torch-free, code-free reader for PyTorch's legacy (non-zip) ``torch.save`` format.

It owns one thing: turning a legacy ``.pth`` state dict into ``dict[str, np.ndarray]`` without
importing torch (which would pull multi-GB CUDA wheels into the image) and without running any
code the file names. Pickle is a small VM that can call any importable function; the restricted
unpickler below resolves only the handful of globals a state dict needs and maps each to our own
plain-data stand-in, so a hostile file can at worst fail to load.

The legacy layout, as ``torch.serialization._legacy_save`` writes it:

    pickle(magic number)   pickle(protocol version 1001)   pickle(sys info)
    pickle(state dict)     -- tensors are persistent ids ('storage', type, key, location,
                              numel, view_metadata) rebuilt by torch._utils._rebuild_tensor_v2
    pickle(list of storage keys)
    per key, in that order: int64 little-endian element count, then the raw element bytes
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# torch's typed storage classes -> the little-endian dtype of their raw bytes. The file records
# its byte order in sys info; we refuse big-endian files rather than byte-swap them.
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchPickleError(ValueError):
    """The file is not a legacy torch state dict we can read safely."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass(slots=True)
class _Storage:
    """A storage named by the pickle; its bytes come after the pickle, so ``data`` is filled in
    once the whole object graph is read."""

    key: str
    dtype: np.dtype[Any]
    numel: int
    data: npt.NDArray[Any] | None = None


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_ignored: object,  # requires_grad, backward_hooks, metadata: irrelevant to inference
) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise TorchPickleError("tensor rebuilt from something that is not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only OrderedDict, the tensor rebuild function and storage types; everything
    else (os.system, builtins.eval, any class with a __reduce__ payload) is refused."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise TorchPickleError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise TorchPickleError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError("persistent id without a known storage type")
        if view_metadata is not None:
            # Storage views predate torch 0.4's tensor-level views; no state dict we read has one.
            raise TorchPickleError("storage views are not supported")
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(str(key), storage_type.dtype, int(numel))
            self._storages[key] = storage
        return storage


def _load_plain(f: IO[bytes]) -> Any:
    """The header pickles hold only ints, strings and dicts: allow no globals at all."""
    return _RestrictedUnpickler(f, {}).load()


def load_state_dict(source: Path | bytes) -> dict[str, npt.NDArray[Any]]:
    """Read a legacy ``torch.save`` state dict; tensors come back as contiguous numpy arrays."""
    data = source if isinstance(source, bytes) else source.read_bytes()
    f = io.BytesIO(data)
    try:
        if _load_plain(f) != _MAGIC_NUMBER:
            raise TorchPickleError("not a legacy torch file (magic number mismatch)")
        if _load_plain(f) != _PROTOCOL_VERSION:
            raise TorchPickleError("unsupported torch serialization protocol version")
        sys_info = _load_plain(f)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise TorchPickleError("only little-endian torch files are supported")

        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(f, storages).load()
        keys = _load_plain(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
        raise TorchPickleError(f"corrupt torch pickle: {exc}") from exc

    if not isinstance(keys, list):
        raise TorchPickleError("storage key list missing")
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise TorchPickleError(f"storage {key!r} listed but never referenced")
        header = f.read(8)
        if len(header) != 8:
            raise TorchPickleError("file truncated in storage data")
        numel = int.from_bytes(header, "little", signed=True)
        if numel != storage.numel:
            raise TorchPickleError(
                f"storage {key!r}: {numel} elements, pickle said {storage.numel}"
            )
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TorchPickleError("file truncated in storage data")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)

    if not isinstance(obj, dict):
        raise TorchPickleError("the pickled object is not a state dict")
    return {str(name): _materialise(ref) for name, ref in obj.items()}


def _materialise(ref: object) -> npt.NDArray[Any]:
    if not isinstance(ref, _TensorRef):
        raise TorchPickleError("state dict value is not a tensor")
    data = ref.storage.data
    if data is None:
        raise TorchPickleError(f"storage {ref.storage.key!r} has no data")
    # Bounds-check before as_strided, which would otherwise read past the buffer on a bad file.
    if any(s < 0 for s in ref.size) or any(st < 0 for st in ref.stride) or ref.offset < 0:
        raise TorchPickleError("negative tensor geometry")
    last = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride, strict=True))
    if 0 not in ref.size and last >= data.shape[0]:
        raise TorchPickleError("tensor extends past its storage")
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :],
        shape=ref.size,
        strides=tuple(st * item for st in ref.stride),
        writeable=False,
    )
    return view.copy()  # C-contiguous, writable, detached from the file buffer
