"""oneDNN's float32 and bfloat16 convolutions (forward, input gradient, kernel gradient) and training batch
normalisations (forward, backward) on memory in place, through its C API.

Why: XLA:CPU computes a convolution's kernel gradient at a few GFLOP/s, so a CIFAR ResNet-20 train step spent half
its time there (benchmarks/RESULTS.md). oneDNN, the library PyTorch's CPU convolutions run on, computes the net's
kernel gradients 2.5-6x faster on the same CPU, its forward convolutions and input gradients as fast or up to 2.3x
faster. `resnet_jax.kernels.conv` calls `run` on XLA's own buffers from a jitted program (an XLA FFI handler,
`resnet_jax.kernels.ffi`); this module knows nothing of JAX. `resnet_jax.kernels.batch_norm` does the same with
the batch normalisation primitive (statistics per group of consecutive examples: one execution per group).

The library: `libdnnl.so.3` of the `onednn-cpu-gomp` wheel (installed with `resnet_jax[train]` on Linux x86-64, where
it lands in `sys.prefix/lib`), or any oneDNN 3.x named by `$RESNET_JAX_ONEDNN_LIBRARY`. Only the C API's stable
calls are used. Nothing is loaded at import: `available()` loads it on first use and says why not if it cannot.

Layouts: activations NHWC and kernels HWIO, as Flax keeps them. Each convolution lets oneDNN pick its kernel's
layout (a blocked one, where its fast kernels live) and reorders the small kernel tensor to and from HWIO; the
activations are never copied. The primitives are made once per shape and kept, the most recently used `MAX_PLANS`
of them (a multi-scale evaluation meets a few hundred shapes; the least recently used are destroyed). Executions are
serialised, and a primitive is looked up, run and evicted under one lock: oneDNN's library-managed scratch memory is
shared between primitives, and its OpenMP threads use every core anyway.
Deterministic: the same inputs give the same bits on the same machine and thread count.

bfloat16: activations, kernel and output all bfloat16 (as XLA's bfloat16 convolution takes and gives them), summed
in float32 inside oneDNN; on a CPU with AMX or AVX-512 BF16 it runs on those units (oneDNN picks the kernel), and
elsewhere oneDNN emulates it or refuses the shape, which `prepare` reports.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys
import threading
from pathlib import Path

import numpy as np

ENV = "RESNET_JAX_ONEDNN_LIBRARY"

# Values of the C API's enums (oneapi/dnnl/dnnl_types.h, oneDNN 3.x).
_CPU, _TAG_ANY, _A, _NHWC, _HWIO = 1, 1, 2, 22, 28
DATA_TYPES = {"bfloat16": 2, "float32": 3}  # dnnl_data_type_t of each NumPy dtype name oneDNN computes here
_ITEM_BYTES = {"bfloat16": 2, "float32": 4}
_FORWARD_TRAINING, _BACKWARD, _DIRECT = 64, 128, 1
_ARG_SRC, _ARG_WEIGHTS, _ARG_DST = 1, 33, 17
_ARG_DIFF_SRC, _ARG_DIFF_WEIGHTS, _ARG_DIFF_DST = 129, 161, 145
_ARG_MEAN, _ARG_VARIANCE, _ARG_SCALE, _ARG_SHIFT = 49, 50, 51, 52
_ARG_DIFF_SCALE, _ARG_DIFF_SHIFT = 255, 256
_ARG_FROM, _ARG_TO = 1, 17
_QUERY_WEIGHTS_MD, _QUERY_DIFF_WEIGHTS_MD = 131, 132
_USE_SCALE, _USE_SHIFT = 0x2, 0x4  # dnnl_normalization_flags_t

_P = ctypes.c_void_p
_Dims = ctypes.c_int64 * 12  # dnnl_dims_t
MAX_PLANS = 1024


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _P)]


Padding = tuple[tuple[int, int], tuple[int, int]]


class _Library:
    """One loaded libdnnl: its CPU engine, one stream, and the primitives made so far (by kind and shapes)."""

    def __init__(self, path: str):
        self.path = path
        self.lib = ctypes.CDLL(path)
        self.lib.dnnl_primitive_desc_query_md.restype = _P
        self.lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        self.lib.dnnl_memory_desc_equal.restype = ctypes.c_int
        self.engine, self.stream = _P(), _P()
        self._check(self.lib.dnnl_engine_create(ctypes.byref(self.engine), _CPU, 0), "dnnl_engine_create")
        self._check(self.lib.dnnl_stream_create(ctypes.byref(self.stream), self.engine, 1), "dnnl_stream_create")
        self._plans: collections.OrderedDict[tuple, _Plan] = collections.OrderedDict()  # least recently used first
        self.lock = threading.Lock()

    def _check(self, status: int, call: str, what: str = "") -> None:
        if status != 0:
            raise RuntimeError(f"oneDNN ({self.path}): {call} failed with status {status}{what}.")

    def memory_desc(self, dims: tuple[int, ...], dtype: str, tag: int) -> _P:
        desc, dims_t = _P(), _Dims(*dims)
        self._check(
            self.lib.dnnl_memory_desc_create_with_tag(ctypes.byref(desc), len(dims), dims_t, DATA_TYPES[dtype], tag),
            "dnnl_memory_desc_create_with_tag",
        )
        return desc

    def _kept(self, key: tuple, make):
        """The plan kept under `key`, made by `make(self, *key[1:])` if there is none; call with `lock` held (the
        plan is valid until it is released: a later call may evict it)."""
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = make(self, *key[1:])
            while len(self._plans) > MAX_PLANS:
                self._plans.popitem(last=False)[1].destroy()
        self._plans.move_to_end(key)
        return plan

    def plan(self, kind: str, dtype: str, x_shape, w_shape, y_shape, strides, padding) -> _Plan:
        """The plan of a convolution (see `_kept`)."""
        key = ("conv", kind, dtype, tuple(x_shape), tuple(w_shape), tuple(y_shape), tuple(strides), padding)
        return self._kept(key, _Plan)

    def batch_norm_plan(self, dtype: str, group_shape, epsilon: float) -> _BatchNormPlan:
        """The plan of a batch normalisation of one group of examples (see `_kept`)."""
        return self._kept(("batch_norm", dtype, tuple(group_shape), float(epsilon)), _BatchNormPlan)

    @property
    def plans(self) -> int:
        """How many plans are kept."""
        return len(self._plans)

    def execute(self, primitive: _P, args: list[tuple[int, _P, int]]) -> None:
        """Runs `primitive` on (argument, memory descriptor, data pointer) triples; call with `lock` held."""
        exec_args = (_ExecArg * len(args))()
        memories = []
        try:
            for i, (arg, desc, pointer) in enumerate(args):
                memory = _P()
                self._check(
                    self.lib.dnnl_memory_create(ctypes.byref(memory), desc, self.engine, _P(pointer)),
                    "dnnl_memory_create",
                )
                memories.append(memory)
                exec_args[i].arg, exec_args[i].memory = arg, memory
            self._check(self.lib.dnnl_primitive_execute(primitive, self.stream, len(args), exec_args), "execute")
            self._check(self.lib.dnnl_stream_wait(self.stream), "dnnl_stream_wait")
        finally:
            for memory in memories:
                self.lib.dnnl_memory_destroy(memory)


class _Primitives:
    """What a plan owns in oneDNN, freed by `destroy`: its primitives, their descriptors (and the layouts they own)
    and its memory descriptors."""

    _lib: ctypes.CDLL
    _primitives: list
    _primitive_descs: list
    _descs: list

    def destroy(self) -> None:
        for primitive in self._primitives:
            if primitive:
                self._lib.dnnl_primitive_destroy(primitive)
        for desc in self._primitive_descs:
            self._lib.dnnl_primitive_desc_destroy(desc)
        for desc in self._descs:
            self._lib.dnnl_memory_desc_destroy(desc)
        self._primitives, self._primitive_descs, self._descs = [], [], []


class _Plan(_Primitives):
    """One convolution primitive ('forward', 'input_grad' or 'kernel_grad') of one dtype (every tensor's) for one set
    of shapes, with the reorder of its kernel tensor between HWIO and the layout the primitive chose (None when they
    are the same)."""

    def __init__(self, library: _Library, kind, dtype, x_shape, w_shape, y_shape, strides, padding):
        lib, check = library.lib, library._check
        what = f" for a {dtype} {kind} convolution of {x_shape} by {w_shape}, strides {strides}, padding {padding}"
        n, h, w, c_in = x_shape
        kh, kw, _, c_out = w_shape
        _, oh, ow, _ = y_shape
        self.x = library.memory_desc((n, c_in, h, w), dtype, _NHWC)  # oneDNN's dims are logical NCHW / OIHW
        self.y = library.memory_desc((n, c_out, oh, ow), dtype, _NHWC)
        self.w_hwio = library.memory_desc((c_out, c_in, kh, kw), dtype, _HWIO)
        w_any = library.memory_desc((c_out, c_in, kh, kw), dtype, _TAG_ANY)
        conv = (_Dims(*strides), _Dims(0, 0), _Dims(padding[0][0], padding[1][0]), _Dims(padding[0][1], padding[1][1]))
        forward = _P()
        check(
            lib.dnnl_convolution_forward_primitive_desc_create(
                ctypes.byref(forward), library.engine, _FORWARD_TRAINING, _DIRECT, self.x, w_any, None, self.y,
                *conv, None,
            ),
            "dnnl_convolution_forward_primitive_desc_create",
            what,
        )  # fmt: skip
        if kind == "forward":
            desc, query = forward, _QUERY_WEIGHTS_MD
        elif kind == "input_grad":
            desc, query = _P(), _QUERY_WEIGHTS_MD
            check(
                lib.dnnl_convolution_backward_data_primitive_desc_create(
                    ctypes.byref(desc), library.engine, _DIRECT, self.x, w_any, self.y, *conv, forward, None
                ),
                "dnnl_convolution_backward_data_primitive_desc_create",
                what,
            )
        else:
            desc, query = _P(), _QUERY_DIFF_WEIGHTS_MD
            check(
                lib.dnnl_convolution_backward_weights_primitive_desc_create(
                    ctypes.byref(desc), library.engine, _DIRECT, self.x, w_any, None, self.y, *conv, forward, None
                ),
                "dnnl_convolution_backward_weights_primitive_desc_create",
                what,
            )
        self._lib, self._descs = lib, [self.x, self.y, self.w_hwio, w_any]
        self._primitive_descs = [forward] if desc is forward else [desc, forward]
        self.primitive = _P()
        check(lib.dnnl_primitive_create(ctypes.byref(self.primitive), desc), "dnnl_primitive_create", what)
        self.w = _P(lib.dnnl_primitive_desc_query_md(desc, query, 0))
        self.w_bytes = lib.dnnl_memory_desc_get_size(self.w)
        self.reorder = None
        if not lib.dnnl_memory_desc_equal(self.w, self.w_hwio):
            src, dst = (self.w, self.w_hwio) if kind == "kernel_grad" else (self.w_hwio, self.w)
            reorder_desc, self.reorder = _P(), _P()
            check(
                lib.dnnl_reorder_primitive_desc_create(
                    ctypes.byref(reorder_desc), src, library.engine, dst, library.engine, None
                ),
                "dnnl_reorder_primitive_desc_create",
                what,
            )
            self._primitive_descs.append(reorder_desc)
            check(lib.dnnl_primitive_create(ctypes.byref(self.reorder), reorder_desc), "dnnl_primitive_create", what)
        self._primitives = [self.primitive, self.reorder]


class _BatchNormPlan(_Primitives):
    """oneDNN's batch normalisation in training, forward and backward, of one group of examples: activations NHWC of
    `dtype`, float32 statistics, scale and shift."""

    def __init__(self, library: _Library, dtype, group_shape, epsilon):
        lib, check = library.lib, library._check
        what = f" for a {dtype} batch normalisation of groups of {group_shape}, epsilon {epsilon}"
        n, h, w, c = group_shape
        self.x = library.memory_desc((n, c, h, w), dtype, _NHWC)
        self.stat = library.memory_desc((c,), "float32", _A)
        self._lib, self._descs, self._primitive_descs, self._primitives = lib, [self.x, self.stat], [], []
        forward, backward = _P(), _P()
        check(
            lib.dnnl_batch_normalization_forward_primitive_desc_create(
                ctypes.byref(forward), library.engine, _FORWARD_TRAINING, self.x, self.x, ctypes.c_float(epsilon),
                _USE_SCALE | _USE_SHIFT, None,
            ),
            "dnnl_batch_normalization_forward_primitive_desc_create",
            what,
        )  # fmt: skip
        self._primitive_descs.append(forward)
        check(
            lib.dnnl_batch_normalization_backward_primitive_desc_create(
                ctypes.byref(backward), library.engine, _BACKWARD, self.x, self.x, self.x, ctypes.c_float(epsilon),
                _USE_SCALE | _USE_SHIFT, forward, None,
            ),
            "dnnl_batch_normalization_backward_primitive_desc_create",
            what,
        )  # fmt: skip
        self._primitive_descs.append(backward)
        self.forward, self.backward = _P(), _P()
        check(lib.dnnl_primitive_create(ctypes.byref(self.forward), forward), "dnnl_primitive_create", what)
        self._primitives.append(self.forward)
        check(lib.dnnl_primitive_create(ctypes.byref(self.backward), backward), "dnnl_primitive_create", what)
        self._primitives.append(self.backward)


_library: _Library | None = None
_failure: str | None = None
_load_lock = threading.Lock()


def _candidates() -> list[str]:
    if os.environ.get(ENV):
        return [os.environ[ENV]]
    return [str(Path(sys.prefix) / "lib" / "libdnnl.so.3"), "libdnnl.so.3"]


def _load() -> _Library | None:
    global _library, _failure
    with _load_lock:
        if _library is None and _failure is None:
            errors = []
            for path in _candidates():
                try:
                    _library = _Library(path)
                    break
                except (OSError, AttributeError, RuntimeError) as e:
                    errors.append(f"{path}: {e}")
            if _library is None:
                _failure = (
                    "it could not be loaded (" + "; ".join(errors) + "). Install it with "
                    f"`pip install onednn-cpu-gomp` (Linux x86-64), or name a libdnnl.so.3 in ${ENV}."
                )
        return _library


def available() -> bool:
    """Whether oneDNN loads here (loading it on the first call)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why oneDNN does not load, with the fix; None when it does."""
    _load()
    return _failure


def _library_or_raise() -> _Library:
    library = _load()
    if library is None:
        raise RuntimeError(f"oneDNN: {_failure}")
    return library


def output_shape(x_shape, w_shape, strides, padding: Padding) -> tuple[int, int, int, int]:
    n, h, w, _ = x_shape
    kh, kw, _, c_out = w_shape
    return (
        n,
        (h + sum(padding[0]) - kh) // strides[0] + 1,
        (w + sum(padding[1]) - kw) // strides[1] + 1,
        c_out,
    )


def prepare(kind: str, dtype: str, x_shape, w_shape, y_shape, strides, padding: Padding) -> None:
    """Makes the primitive `run` will use (at trace time, so that a shape oneDNN refuses fails there, in Python)."""
    library = _library_or_raise()
    with library.lock:
        library.plan(kind, dtype, x_shape, w_shape, y_shape, tuple(strides), padding)


def run(
    kind: str, dtype: str, strides, padding: Padding, x: tuple[int, tuple], w: tuple[int, tuple], y: tuple[int, tuple]
) -> None:
    """One convolution of `dtype` ('float32' or 'bfloat16', every tensor's) on memory given as (data pointer, shape):
    the activations `x` (NHWC), the kernel `w` (HWIO) and the output `y` (NHWC). 'forward' writes y from x and w;
    'input_grad' writes x (its gradient) from y (the output's gradient) and w; 'kernel_grad' writes w (its gradient)
    from x and y (the output's gradient)."""
    library = _library_or_raise()
    with library.lock:
        plan = library.plan(kind, dtype, x[1], w[1], y[1], tuple(strides), padding)
        blocked = np.empty(plan.w_bytes, np.uint8) if plan.reorder is not None else None
        kernel = w[0] if blocked is None else blocked.ctypes.data
        if kind == "kernel_grad":
            args = [(_ARG_SRC, plan.x, x[0]), (_ARG_DIFF_WEIGHTS, plan.w, kernel), (_ARG_DIFF_DST, plan.y, y[0])]
            library.execute(plan.primitive, args)
            if blocked is not None:
                library.execute(plan.reorder, [(_ARG_FROM, plan.w, kernel), (_ARG_TO, plan.w_hwio, w[0])])
            return
        if blocked is not None:
            library.execute(plan.reorder, [(_ARG_FROM, plan.w_hwio, w[0]), (_ARG_TO, plan.w, kernel)])
        x_arg, y_arg = (_ARG_SRC, _ARG_DST) if kind == "forward" else (_ARG_DIFF_SRC, _ARG_DIFF_DST)
        library.execute(plan.primitive, [(x_arg, plan.x, x[0]), (_ARG_WEIGHTS, plan.w, kernel), (y_arg, plan.y, y[0])])


def prepare_batch_norm(dtype: str, group_shape, epsilon: float) -> None:
    """Makes the primitives `batch_norm_forward` and `batch_norm_backward` will use for groups of `group_shape`
    (NHWC) at trace time."""
    library = _library_or_raise()
    with library.lock:
        library.batch_norm_plan(dtype, group_shape, epsilon)


def _groups(x: tuple[int, tuple], stats: tuple[int, tuple], dtype: str):
    """Each group's (offset in bytes into the activations, offset into a (groups, C) float32 statistic) and the shape
    of one group: the groups are consecutive blocks of examples."""
    (n, h, w, c), groups = x[1], stats[1][0]
    step = (n // groups) * h * w * c * _ITEM_BYTES[dtype]
    return [(g * step, g * c * 4) for g in range(groups)], (n // groups, h, w, c)


def batch_norm_forward(dtype: str, epsilon: float, x, scale, shift, y, mean, var) -> None:
    """Batch normalisation in training of `x` (NHWC, `dtype`) with statistics per group of consecutive examples:
    writes `y` (as x) and each group's `mean` and biased `var` ((groups, C) float32). `scale` and `shift`: (C,)
    float32. Each argument is (data pointer, shape)."""
    _batch_norm(
        "forward", dtype, epsilon, x, mean,
        activations={_ARG_SRC: x, _ARG_DST: y},
        statistics={_ARG_MEAN: mean, _ARG_VARIANCE: var},
        vectors={_ARG_SCALE: scale, _ARG_SHIFT: shift},
    )  # fmt: skip


def batch_norm_backward(dtype: str, epsilon: float, x, dy, scale, mean, var, dx, dscale, dshift) -> None:
    """The gradients of `batch_norm_forward` from the output's `dy`: writes `dx` (as x) and each group's `dscale`
    and `dshift` ((groups, C) float32: their sum over groups is the gradient), reading the forward's statistics."""
    _batch_norm(
        "backward", dtype, epsilon, x, mean,
        activations={_ARG_SRC: x, _ARG_DIFF_DST: dy, _ARG_DIFF_SRC: dx},
        statistics={_ARG_MEAN: mean, _ARG_VARIANCE: var, _ARG_DIFF_SCALE: dscale, _ARG_DIFF_SHIFT: dshift},
        vectors={_ARG_SCALE: scale},
    )  # fmt: skip


def _batch_norm(direction: str, dtype: str, epsilon: float, x, mean, *, activations, statistics, vectors) -> None:
    """Runs the plan's `direction` primitive once per group on {argument: buffer} of the activations' shape, of the
    (groups, C) statistics' and of (C,) vectors, each group's part of the first two."""
    library = _library_or_raise()
    offsets, group_shape = _groups(x, mean, dtype)
    with library.lock:
        plan = library.batch_norm_plan(dtype, group_shape, epsilon)
        primitive = plan.forward if direction == "forward" else plan.backward
        for at, stat_at in offsets:
            args = [(arg, plan.x, buffer[0] + at) for arg, buffer in activations.items()]
            args += [(arg, plan.stat, buffer[0] + stat_at) for arg, buffer in statistics.items()]
            args += [(arg, plan.stat, buffer[0]) for arg, buffer in vectors.items()]
            library.execute(primitive, args)
