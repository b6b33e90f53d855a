"""How the nets compute their convolutions: the model option `conv_impl`.

- 'xla': `lax.conv_general_dilated`, compiled by XLA for whatever backend runs the program.
- 'onednn': on XLA:CPU, oneDNN's kernels (`resnet_jax.models.onednn`) called from the compiled program through
  `jax.pure_callback`, with a custom VJP whose input and kernel gradients are oneDNN's too. float32, NHWC/HWIO,
  no dilation or groups; any other convolution falls back to XLA's. Equal to XLA's within float32 rounding.
- 'auto' (the default): 'onednn' for a single-device program on the CPU backend when oneDNN loads, 'xla' otherwise.
  Accelerators always run XLA's convolutions. A multi-device CPU program (simulated devices, `jax.distributed`)
  keeps XLA's too: a host callback under a sharded `jit` would gather every shard onto one device.

Why: on XLA:CPU a convolution's kernel gradient runs at a few GFLOP/s; oneDNN's made the CIFAR ResNet-20 train step
about 1.7x faster on this project's CPU (benchmarks/RESULTS.md, `python -m benchmarks.cpu_vs_torch`). Deterministic on
one machine and thread count, like XLA's. Limits of the 'onednn' path: no forward-mode or second derivatives
(`jax.jvp`, `jax.hessian`: use 'xla'), and under `jax.vmap` the callbacks run once per mapped element.
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

from resnet_jax.core.errors import ConfigError
from resnet_jax.models import onednn

CONV_IMPLS = ("auto", "xla", "onednn")


def check(impl: str) -> None:
    """Raises ValueError for an unknown `impl`, ConfigError for 'onednn' where oneDNN does not load (the message says
    how to install it). Asks nothing of JAX's backends, so configs can be checked before `jax.distributed` starts."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"Invalid conv_impl {impl!r}. Valid values: {CONV_IMPLS}.")
    if impl == "onednn" and not onednn.available():
        raise ConfigError(f"conv_impl='onednn' asks for oneDNN, but {onednn.unavailable_reason()}")


def resolve(impl: str) -> str:
    """'xla' or 'onednn': what `impl` means in this process (see the module docstring); `check`'s errors."""
    check(impl)
    if impl == "auto":
        on_one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
        impl = "onednn" if on_one_cpu and onednn.available() else "xla"
        logging.log_first_n(logging.INFO, "Convolutions (conv_impl='auto'): %s.", 1, impl)
    return impl


def scans_well(impl: str, dtype: Any = jnp.float32) -> bool:
    """Whether train steps with these convolutions (of `dtype`) run at full speed inside a `lax.scan`: everywhere
    but where XLA computes them on the CPU backend, whose gradients run 7-50x slower in a loop body
    (benchmarks/RESULTS.md). oneDNN's (float32 only) are callbacks, as fast in a loop body as outside one."""
    on_onednn = resolve(impl) == "onednn" and jnp.dtype(dtype) == jnp.float32
    return on_onednn or jax.default_backend() != "cpu"


def conv_general_dilated_for(impl: str) -> Callable[..., jax.Array]:
    """The function with `lax.conv_general_dilated`'s signature that `flax.linen.Conv` should call for `impl`."""
    return onednn_conv_general_dilated if resolve(impl) == "onednn" else lax.conv_general_dilated


_NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


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
) -> jax.Array:
    """`lax.conv_general_dilated`, computed by oneDNN where it can be (see the module docstring), by XLA otherwise."""
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    kwargs = dict(
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    supported = (
        lhs.ndim == 4
        and lhs.dtype == rhs.dtype == jnp.float32
        and preferred_element_type in (None, jnp.float32)
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
    return _conv(lhs, rhs, tuple(int(s) for s in window_strides), pads)


def _callback(function: Callable[..., np.ndarray], shape: Sequence[int], *operands: jax.Array) -> jax.Array:
    result = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    return jax.pure_callback(function, result, *operands, vmap_method="sequential")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: onednn.Padding) -> jax.Array:
    shape = onednn.output_shape(x.shape, w.shape, strides, padding)
    return _callback(functools.partial(onednn.forward, strides=strides, padding=padding), shape, x, w)


def _conv_forward(x, w, strides, padding):
    return _conv(x, w, strides, padding), (x, w)


def _conv_backward(strides, padding, residuals, dy):
    x, w = residuals
    dx = _callback(
        functools.partial(onednn.input_grad, x_shape=x.shape, strides=strides, padding=padding), x.shape, dy, w
    )
    dw = _callback(
        functools.partial(onednn.kernel_grad, w_shape=w.shape, strides=strides, padding=padding), w.shape, x, dy
    )
    return dx, dw


_conv.defvjp(_conv_forward, _conv_backward)
