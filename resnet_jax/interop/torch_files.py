"""Tensors from files written by `torch.save`, without torch and without running any of the file's code.

A `torch.save` file is a pickle, and unpickling calls whatever the pickle names: `torch.load` of a downloaded
checkpoint can run arbitrary code. This reader unpickles with an allow-list of the few names a state dict is made of
(`collections.OrderedDict`, torch's tensor-rebuild functions, its storage types) and builds NumPy arrays from the raw
storage bytes itself; any other name means the file holds more than tensors, and it is refused before anything is
called. Both formats are read: the zip archive of torch >= 1.6 (`<name>/data.pkl` beside `<name>/data/<key>`) and the
legacy sequence of pickles (magic number, protocol version, system info, the object, its storage keys, then each
storage as an element count and raw little-endian bytes), in which the public CIFAR ResNets (`.th`) are saved.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # the legacy format's first pickle
_PROTOCOL_VERSION = 1001  # its second
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",  # raw bytes: torch >= 2.0 writes it for a storage saved on its own
}
# Old files name a GPU tensor's storage `torch.cuda.FloatStorage`; its bytes are the same.
_STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")


class _Pending:
    """Stands for a legacy file's storage while its dtype is learnt: the bytes follow the object's pickle."""


_PENDING = _Pending()


@dataclasses.dataclass(slots=True)
class _StorageType:
    """What a pickled `torch.<X>Storage` class becomes: its name, checked again where it is used (a pickle can set
    attributes on it), gives the element type."""

    name: str


def _dtype(storage_name: str) -> np.dtype:
    if storage_name == "BFloat16Storage":
        try:
            import ml_dtypes
        except ImportError:
            raise pickle.UnpicklingError(
                "The file holds bfloat16 tensors, which NumPy represents only with ml_dtypes: pip install ml_dtypes."
            ) from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_STORAGE_DTYPES[storage_name])


def _tensor(storage: Any, storage_offset: int, size: Any, stride: Any) -> np.ndarray | _Pending:
    """torch's `_rebuild_tensor`: the strided view of `storage` that the tensor was, as a contiguous array."""
    if storage is _PENDING:
        return _PENDING
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError(f"A tensor is rebuilt from a {type(storage).__name__}, not a storage.")
    offset, size, stride = int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or min((*size, *stride), default=0) < 0:
        raise pickle.UnpicklingError(f"A tensor has an invalid size {size}, stride {stride} or offset {offset}.")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:  # as_strided would read memory outside the storage
        raise pickle.UnpicklingError(
            f"A tensor of size {size}, stride {stride} at offset {offset} reaches past its storage of "
            f"{storage.size} elements: the file is corrupt."
        )
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * storage.itemsize for s in stride), writeable=False
    )
    return view.copy()  # C-contiguous, owns its memory, and stays 0-d for a scalar (ascontiguousarray would not)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode`, as protocol 2 pickles `bytes`: only that use (str -> latin-1 bytes) is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only for latin-1 bytes, not {encoding!r}.")
    return text.encode("latin-1")


_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor"): _tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a state dict and refuses every other name, so that no code of the file's choosing runs."""

    def __init__(self, file: BinaryIO, source: str, storage: Callable[..., Any] | None = None):
        super().__init__(file)
        self._source = source
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        # Fresh objects each time: a pickle's BUILD may set attributes on what this returns, so nothing shared
        # (a module-level function, a cached np.dtype) is handed out.
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict  # an immutable built-in type
        if (module, name) in _FUNCTIONS:
            function = _FUNCTIONS[module, name]
            return lambda *args: function(*args)
        if module in _STORAGE_MODULES and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"{self._source} names {module}.{name}: the file holds more than tensors, and it is not loaded because "
            "unpickling it could run code. Save only the state dict (`torch.save(model.state_dict(), path)`), or "
            "convert it where you trust it, e.g. `safetensors.torch.save_file(state_dict, 'weights.safetensors')`."
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"{self._source} has an unknown persistent id {pid!r}.")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise pickle.UnpicklingError(
                f"{self._source} holds a whole nn.Module, not a state dict, and unpickling it could run code. "
                "Save `model.state_dict()` instead."
            )
        if kind != "storage" or len(pid) not in (5, 6) or self._storage is None:
            raise pickle.UnpicklingError(f"{self._source} has an unknown persistent id {pid!r}.")
        storage_type, key, _location, numel = pid[1:5]
        if (
            not isinstance(storage_type, _StorageType)
            or storage_type.name not in _STORAGE_DTYPES
            or not isinstance(numel, int)
            or numel < 0
        ):
            raise pickle.UnpicklingError(f"{self._source} has a malformed storage id {pid!r}.")
        view = pid[5] if len(pid) == 6 else None
        return self._storage(_dtype(storage_type.name), str(key), numel, view)


def _load(file: BinaryIO, source: str, storage: Callable[..., Any] | None = None) -> Any:
    return _RestrictedUnpickler(file, source, storage).load()


def _array(data: bytes, dtype: np.dtype, numel: int, byteorder: str, source: str) -> np.ndarray:
    if len(data) < numel * dtype.itemsize:
        raise pickle.UnpicklingError(
            f"{source}: a storage of {numel} {dtype} elements has only {len(data)} bytes: the file is truncated."
        )
    array = np.frombuffer(data, dtype, count=numel)
    return array.byteswap() if byteorder != sys.byteorder and dtype.itemsize > 1 else array


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise pickle.UnpicklingError(
                f"{path} is a zip archive with {len(pickles)} data.pkl records, not a torch.save file "
                "(a TorchScript model needs torch.jit.load)."
            )
        prefix = pickles[0].removesuffix("data.pkl")
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise pickle.UnpicklingError(f"{path} has an unknown byte order {byteorder!r}.")
        storages: dict[str, np.ndarray] = {}

        def storage(dtype: np.dtype, key: str, numel: int, view: Any) -> np.ndarray:
            if key not in storages:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise pickle.UnpicklingError(f"{path} has no record {record!r} for a tensor's storage.")
                storages[key] = _array(archive.read(record), dtype, numel, byteorder, str(path))
            return storages[key]

        return _load(io.BytesIO(archive.read(pickles[0])), str(path), storage)


def _read_legacy(path: Path) -> Any:
    """The pre-1.6 format. Its storages' dtypes are known only from the object's pickle and their bytes follow it,
    so the object is unpickled twice: once to learn each storage's dtype, then over the storages' bytes."""
    source = str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            magic = _load(f, source)
        except (pickle.UnpicklingError, EOFError) as e:
            magic = e
        if magic != _MAGIC_NUMBER:
            raise pickle.UnpicklingError(
                f"{path} is neither a zip archive nor a legacy torch.save file (it does not start with torch's magic "
                "number); files of torch < 0.4 (a tar archive) are not supported."
            )
        version = _load(f, source)
        if version != _PROTOCOL_VERSION:
            raise pickle.UnpicklingError(f"{path} has legacy protocol version {version}; expected {_PROTOCOL_VERSION}.")
        _load(f, source)  # system info: the storages' bytes are little-endian whatever it says
        start = f.tell()

        dtypes: dict[str, np.dtype] = {}

        def learn(dtype: np.dtype, key: str, numel: int, view: Any) -> _Pending:
            dtypes.setdefault(key, dtype)
            return _PENDING

        _load(f, source, learn)
        storages: dict[str, np.ndarray] = {}
        for key in _load(f, source):
            if str(key) not in dtypes:
                raise pickle.UnpicklingError(f"{path} stores storage {key!r}, which no tensor uses.")
            dtype = dtypes[str(key)]
            numel = int.from_bytes(f.read(8), "little", signed=True)
            if not 0 <= numel * dtype.itemsize <= size - f.tell():
                raise pickle.UnpicklingError(f"{path}: storage {key!r} claims {numel} elements: the file is corrupt.")
            storages[str(key)] = _array(f.read(numel * dtype.itemsize), dtype, numel, "little", source)

        def storage(dtype: np.dtype, key: str, numel: int, view: Any) -> np.ndarray:
            if key not in storages:
                raise pickle.UnpicklingError(f"{path} has no bytes for storage {key!r}: the file is truncated.")
            if view is None:
                return storages[key]
            _view_key, offset, view_size = view  # a storage view, written by torch < 1.0
            return storages[key][int(offset) : int(offset) + int(view_size)]

        f.seek(start)
        return _load(f, source, storage)


def read_torch_file(path: str | Path) -> Any:
    """The object a `torch.save` file holds (a state dict, or a checkpoint dict around one), with NumPy arrays for
    its tensors, read without torch and without running code from the file.

    Raises:
      pickle.UnpicklingError: the file names anything but a state dict's ingredients (it could run code), or is not
        a torch.save file, or is corrupt; the message names the file and what it found.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path)


def state_dict_of(obj: Any) -> dict[str, np.ndarray]:
    """The state dict in what `read_torch_file` returns: a bare state dict, or a checkpoint that keeps it under
    'state_dict' (akamaster's CIFAR ResNets, mmpretrain's beside 'meta') or 'model'. Entries that are not arrays
    (akamaster's `best_prec1`) are dropped, and DataParallel's `module.` prefix is stripped.

    Raises:
      ValueError: `obj` holds no arrays; the message lists its keys.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"Expected a state dict or a checkpoint dict, got a {type(obj).__name__}.")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    arrays = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    if not arrays:
        raise ValueError(
            f"No tensors found: expected a state dict or a dict with 'state_dict' or 'model'; keys {list(obj)[:10]}."
        )
    return arrays
