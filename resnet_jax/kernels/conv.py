"""How the nets compute their convolutions: the model option `conv_impl` (its values: `resnet_jax.kernels.choice`).

- 'xla': `lax.conv_general_dilated`.
- 'onednn': oneDNN's convolutions, with a custom VJP whose input and kernel gradients are oneDNN's too. float32 or
  bfloat16 (all operands of one dtype; bfloat16 summed in float32, on the CPU's AMX or AVX-512 BF16 units where it
  has them), NHWC/HWIO, no dilation or groups; any other convolution falls back to XLA's. Equal to XLA's within the
  dtype's rounding.
- 'auto' (the default): 'onednn' for a single-device program on the CPU backend, 'xla' otherwise (`choice`).

Why: on XLA:CPU a convolution's kernel gradient runs at a few GFLOP/s; oneDNN's made the CIFAR ResNet-20 train step
2.6x faster and ResNet-50's 1.8x on this project's CPU (benchmarks/RESULTS.md, `python -m benchmarks.cpu_vs_torch`);
XLA:CPU's bfloat16 convolutions are slower still (its bfloat16 train step ran at a quarter of PyTorch's).
Deterministic on one machine and thread count, like XLA's. Limits of the 'onednn' path: no forward-mode or second
derivatives (`jax.jvp`, `jax.hessian`: use 'xla'), and under `jax.vmap` the calls run once per mapped element.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from resnet_jax.kernels import choice, ffi, onednn

CONV_IMPLS = choice.IMPLS


def check(impl: str) -> None:
    """`choice.check` of `conv_impl`."""
    choice.check("conv_impl", impl)


def resolve(impl: str) -> str:
    """'xla' or 'onednn': what `impl` means in this process (`choice.resolve`)."""
    return choice.resolve("conv_impl", impl, "convolutions", _onednn_works)


@functools.cache
def _onednn_works() -> bool:
    """Whether a small oneDNN convolution and its gradients give XLA's in this process (once; `choice.agrees`)."""

    def value_and_grads(conv):
        loss = lambda x, w: jnp.sum(conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DIMS) ** 2)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    x = np.linspace(-1, 1, 2 * 5 * 5 * 3, dtype=np.float32).reshape(2, 5, 5, 3)
    w = np.linspace(1, -1, 3 * 3 * 3 * 4, dtype=np.float32).reshape(3, 3, 3, 4)
    ours = value_and_grads(functools.partial(onednn_conv_general_dilated, strict=True))
    return choice.agrees("conv_impl", "convolutions", ours, value_and_grads(lax.conv_general_dilated), x, w,
                         rtol=1e-4, atol=1e-5)  # fmt: skip


def uses_onednn(impl: str, dtype: Any = jnp.float32) -> bool:
    """Whether oneDNN computes the convolutions of `dtype` under `impl` in this process (float32 and bfloat16)."""
    return resolve(impl) == "onednn" and choice.onednn_dtype(dtype) is not None


def scans_well(impl: str, dtype: Any = jnp.float32) -> bool:
    """Whether train steps with these convolutions (of `dtype`) run at full speed inside a `lax.scan`: everywhere
    but where XLA computes them on the CPU backend, whose gradients run 7-50x slower in a loop body
    (benchmarks/RESULTS.md). oneDNN's are FFI calls, as fast in a loop body as outside one."""
    return uses_onednn(impl, dtype) or jax.default_backend() != "cpu"


def conv_general_dilated_for(impl: str) -> Callable[..., jax.Array]:
    """The function with `lax.conv_general_dilated`'s signature that `flax.linen.Conv` should call for `impl`. Under
    'auto', a convolution oneDNN cannot prepare (a shape it refuses, a handler XLA does not register) is XLA's, with
    one log line; asked for by name, 'onednn' raises instead."""
    if resolve(impl) != "onednn":
        return lax.conv_general_dilated
    return functools.partial(onednn_conv_general_dilated, strict=impl == "onednn")


_DIMS = ("NHWC", "HWIO", "NHWC")
_NHWC_HWIO = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, _DIMS)  # the only layout oneDNN's path takes


def onednn_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    strict: bool = True,
) -> jax.Array:
    """`lax.conv_general_dilated`, computed by oneDNN where it can be (see the module docstring), by XLA otherwise.
    Every oneDNN primitive and FFI target the convolution and its gradients need is made here, at trace time: where
    one fails, `strict` raises (a RuntimeError naming it), else XLA computes this convolution (one log line)."""
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    kwargs = dict(
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    dtype = choice.onednn_dtype(lhs.dtype)
    supported = (
        lhs.ndim == 4
        and dtype is not None
        and rhs.dtype == lhs.dtype
        and (preferred_element_type is None or jnp.dtype(preferred_element_type) == lhs.dtype)
        and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC_HWIO
    )
    if not supported:
        return lax.conv_general_dilated(*args, **kwargs)
    pads = tuple((int(low), int(high)) for low, high in padding)
    strides = tuple(int(s) for s in window_strides)
    try:
        y_shape = onednn.output_shape(lhs.shape, rhs.shape, strides, pads)
        for kind in ("forward", "input_grad", "kernel_grad"):
            onednn.prepare(kind, dtype, lhs.shape, rhs.shape, y_shape, strides, pads)
            _target(kind, dtype, strides, pads)
    except Exception as error:
        if strict:
            raise RuntimeError(f"conv_impl='onednn': oneDNN cannot compute this convolution: {error}") from error
        logging.warning(
            "oneDNN cannot compute a convolution of %s by %s (%s); XLA computes it.", lhs.shape, rhs.shape, error
        )
        return lax.conv_general_dilated(*args, **kwargs)
    return _conv(lhs, rhs, strides, pads)


def _target(kind: str, dtype: str, strides: tuple[int, int], padding: onednn.Padding) -> str:
    """The XLA FFI target that runs oneDNN's `kind` convolution of `dtype` with these strides and padding."""
    (top, bottom), (left, right) = padding
    name = f"resnet_jax_onednn_{kind}_{dtype}_s{strides[0]}x{strides[1]}_p{top}_{bottom}_{left}_{right}"

    def function(args: list[ffi.Buffer], results: list[ffi.Buffer]) -> None:
        if kind == "forward":
            (x, w), (y,) = args, results
        elif kind == "input_grad":
            (y, w), (x,) = args, results
        else:
            (x, y), (w,) = args, results
        onednn.run(kind, dtype, strides, padding, x, w, y)

    return ffi.register(name, function, ffi.Signature.uniform(args=2, results=1, rank=4, dtype=ffi.DTYPES[dtype]))


def _call(kind: str, strides, padding, shapes, result_shape, *operands: jax.Array) -> jax.Array:
    dtype = jnp.dtype(operands[0].dtype).name
    onednn.prepare(kind, dtype, *shapes, strides, padding)
    call = jax.ffi.ffi_call(
        _target(kind, dtype, strides, padding),
        jax.ShapeDtypeStruct(tuple(result_shape), operands[0].dtype),
        vmap_method="sequential",
    )
    return call(*operands)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: onednn.Padding) -> jax.Array:
    y_shape = onednn.output_shape(x.shape, w.shape, strides, padding)
    return _call("forward", strides, padding, (x.shape, w.shape, y_shape), y_shape, x, w)


def _conv_forward(x, w, strides, padding):
    return _conv(x, w, strides, padding), (x, w)


def _conv_backward(strides, padding, residuals, dy):
    x, w = residuals
    shapes = (x.shape, w.shape, dy.shape)
    dx = _call("input_grad", strides, padding, shapes, x.shape, dy, w)
    dw = _call("kernel_grad", strides, padding, shapes, w.shape, x, dy)
    return dx, dw


_conv.defvjp(_conv_forward, _conv_backward)
