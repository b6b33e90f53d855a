"""A Python function as an XLA FFI handler on the CPU backend, through ctypes: no compiler, no copies.

`jax.pure_callback` hands a host function NumPy copies of its operands and copies its result back into XLA's buffer
(1.5 ms for an 8 MB activation on this project's CPU: about a seventh of a ResNet-20 train step over its 57
convolution calls). A handler registered with `jax.ffi` receives XLA's buffers themselves: `register(name, function)`
makes `jax.ffi.ffi_call(name, ...)` call `function(args, results)` with each operand and result as a
(data pointer, shape) pair, for the function to read and write in place.

The handler follows XLA's FFI C API (xla/ffi/api/c_api.h, API version 0.3, as `jax.ffi.include_dir()` ships it):
it answers XLA's metadata query with that version, runs at the execute stage only, and turns an exception of
`function` into an XLA error carrying its message, so a failure stops the computation rather than leaving a buffer
unwritten. Before it reads a buffer it checks what XLA handed it against what this mirror of the header knows: the
API's major version, each struct's `struct_size` (a newer minor version may only append fields), the arguments'
kinds, counts, dtypes and ranks (`Signature`); a mismatch is an XLA error naming it, never a read of memory laid out
otherwise. ctypes takes the GIL for the call; the function should hand long work to a library that releases it.

Why not `jax.experimental.buffer_callback`, which also hands a Python function XLA's buffers in place, as fast
(`python -m benchmarks.host_calls`: the same cost within the CPU's noise, benchmarks/RESULTS.md):
a program calling it is never written to the persistent compilation cache (`--compilation_cache`), so every restart
of a CPU run would compile its step again, while a program calling a registered FFI target is cached (tested); and an
exception whose message cannot be encoded (a lone surrogate) takes the process down inside it (SIGSEGV).
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from collections.abc import Callable

import jax

Buffer = tuple[int, tuple[int, ...]]  # (data pointer, shape)
_P = ctypes.c_void_p
_API_MAJOR, _API_MINOR = 0, 3
_EXTENSION_METADATA, _STAGE_EXECUTE, _ERROR_INTERNAL = 1, 3, 13
_ARG_BUFFER = 1  # XLA_FFI_ArgType_BUFFER (and XLA_FFI_RetType_BUFFER)
DTYPES = {"float32": 11, "bfloat16": 16}  # XLA_FFI_DataType of the dtypes handlers here take


@dataclasses.dataclass(frozen=True)
class Signature:
    """What a handler takes: each argument's and each result's (rank, XLA_FFI_DataType), in order (`DTYPES`)."""

    args: tuple[tuple[int, int], ...]
    results: tuple[tuple[int, int], ...]

    @classmethod
    def uniform(cls, args: int, results: int, rank: int, dtype: int) -> Signature:
        """`args` arguments and `results` results, every one of them of `rank` and `dtype`."""
        return cls(((rank, dtype),) * args, ((rank, dtype),) * results)


class _ExtensionBase(ctypes.Structure):
    pass


_ExtensionBase._fields_ = [
    ("struct_size", ctypes.c_size_t),
    ("type", ctypes.c_int),
    ("next", ctypes.POINTER(_ExtensionBase)),
]


class _ApiVersion(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
    ]


class _Metadata(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("api_version", _ApiVersion),
        ("traits", ctypes.c_uint32),
        ("state_type_id", ctypes.c_int64),
    ]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("dtype", ctypes.c_int),
        ("data", _P),
        ("rank", ctypes.c_int64),
        ("dims", ctypes.POINTER(ctypes.c_int64)),
    ]


class _Buffers(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets have this layout
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("size", ctypes.c_int64),
        ("types", _P),
        ("items", ctypes.POINTER(ctypes.POINTER(_Buffer))),
    ]


class _Attrs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("size", ctypes.c_int64),
        ("types", _P),
        ("names", _P),
        ("attrs", _P),
    ]


class _CallFrame(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("api", _P),
        ("ctx", _P),
        ("stage", ctypes.c_int),
        ("args", _Buffers),
        ("rets", _Buffers),
        ("attrs", _Attrs),
        ("future", _P),
    ]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("message", ctypes.c_char_p),
        ("errc", ctypes.c_int),
    ]


_ERROR_CREATE = ctypes.CFUNCTYPE(_P, ctypes.POINTER(_ErrorCreateArgs))


class _ApiHead(ctypes.Structure):  # the first fields of XLA_FFI_Api
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", _P),
        ("api_version", _ApiVersion),
        ("internal_api", _P),
        ("error_create", _ERROR_CREATE),
    ]


_HANDLER = ctypes.CFUNCTYPE(_P, ctypes.POINTER(_CallFrame))
_handlers: dict[str, object] = {}  # name: the ctypes handler, kept alive as long as XLA may call it
_lock = threading.Lock()


def _size_to(struct: type[ctypes.Structure], last_field: str) -> int:
    """`struct_size` as XLA_FFI_DEFINE_STRUCT_TRAITS counts it: up to the end of `last_field`, without padding."""
    field = getattr(struct, last_field)
    return field.offset + field.size


_FRAME_SIZE = _size_to(_CallFrame, "attrs")  # the header's traits end the call frame at `attrs`, not `future`
_BUFFERS_SIZE = _size_to(_Buffers, "items")
_BUFFER_SIZE = _size_to(_Buffer, "dims")


def _mismatch(frame: _CallFrame, signature: Signature) -> str | None:
    """What in XLA's call frame differs from this mirror of the header and from `signature`; None if nothing."""
    api = ctypes.cast(frame.api, ctypes.POINTER(_ApiHead)).contents
    ours = f"API {_API_MAJOR}.{_API_MINOR}'s"
    if api.api_version.major != _API_MAJOR:
        return f"XLA speaks FFI API {api.api_version.major}.{api.api_version.minor}; this handler {_API_MAJOR}.x"
    if frame.struct_size < _FRAME_SIZE:
        return f"XLA's call frame is {frame.struct_size} bytes; {ours} is {_FRAME_SIZE}"
    lists = (("argument", frame.args, signature.args), ("result", frame.rets, signature.results))
    for what, buffers, expected in lists:
        if buffers.struct_size < _BUFFERS_SIZE:
            return f"XLA's {what} list is {buffers.struct_size} bytes; {ours} is {_BUFFERS_SIZE}"
        if buffers.size != len(expected):
            return f"{buffers.size} {what}s, expected {len(expected)}"
        kinds = ctypes.cast(buffers.types, ctypes.POINTER(ctypes.c_int))
        for i, (rank, dtype) in enumerate(expected):
            if kinds[i] != _ARG_BUFFER:
                return f"{what} {i} is not a buffer (kind {kinds[i]})"
            b = buffers.items[i].contents
            if b.struct_size < _BUFFER_SIZE:
                return f"XLA's buffer is {b.struct_size} bytes; {ours} is {_BUFFER_SIZE}"
            if b.dtype != dtype or b.rank != rank:
                return f"{what} {i} has XLA dtype {b.dtype} and rank {b.rank}, expected dtype {dtype} and rank {rank}"
    return None


def _buffers(buffers: _Buffers) -> list[Buffer]:
    result = []
    for i in range(buffers.size):
        b = buffers.items[i].contents
        result.append((b.data or 0, tuple(b.dims[d] for d in range(b.rank))))
    return result


def _error(frame: _CallFrame, message: str) -> int | None:
    api = ctypes.cast(frame.api, ctypes.POINTER(_ApiHead)).contents
    text = message.encode("utf-8", "backslashreplace")  # any str, a lone surrogate included
    args = _ErrorCreateArgs(_size_to(_ErrorCreateArgs, "errc"), None, text, _ERROR_INTERNAL)
    return api.error_create(ctypes.byref(args))


def _handler(name: str, function: Callable[[list[Buffer], list[Buffer]], None], signature: Signature):
    def handle(frame_pointer):
        frame = frame_pointer.contents
        extension = frame.extension_start
        if extension and extension.contents.type == _EXTENSION_METADATA:  # XLA asks which API version we speak
            metadata = ctypes.cast(extension, ctypes.POINTER(_MetadataExtension)).contents.metadata.contents
            metadata.api_version = _ApiVersion(ctypes.sizeof(_ApiVersion), None, _API_MAJOR, _API_MINOR)
            metadata.traits = 0
            return None
        if frame.stage != _STAGE_EXECUTE:
            return None
        try:
            mismatch = _mismatch(frame, signature)
            if mismatch is not None:
                return _error(frame, f"{name}: the call does not match the handler: {mismatch}.")
            function(_buffers(frame.args), _buffers(frame.rets))
        except BaseException as error:  # noqa: BLE001 - every failure, Ctrl-C's too, becomes XLA's error: an
            # exception that escaped a ctypes callback would hand XLA a garbage pointer and abort the process
            return _error(frame, f"{name}: {type(error).__name__}: {error}")
        return None

    return _HANDLER(handle)


def register(name: str, function: Callable[[list[Buffer], list[Buffer]], None], signature: Signature) -> str:
    """Makes `jax.ffi.ffi_call(name, ...)` on the CPU call `function(args, results)` for calls that match
    `signature` (once per name; later calls with the same name keep the first function). Returns `name`."""
    with _lock:
        if name not in _handlers:
            handler = _handler(name, function, signature)
            pointer = ctypes.cast(handler, _P).value
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(pointer), platform="cpu")
            _handlers[name] = handler
    return name
