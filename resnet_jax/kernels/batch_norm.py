"""How the nets compute batch normalisation in training: the model option `bn_impl` (its values:
`resnet_jax.kernels.choice`).

`normalize` computes what training needs: the activations normalised with the statistics of each group of
consecutive examples, scaled and shifted, and those statistics (each group's mean and biased variance, float32).

- 'xla': written in jax.numpy (statistics and normalisation in float32, the output cast to the activations' dtype),
  compiled by XLA, its gradients by autodiff.
- 'onednn': oneDNN's batch normalisation primitive, forward and backward (`resnet_jax.kernels.onednn`), for NHWC
  activations of float32 or bfloat16 (statistics, scale and shift float32, computed in float32 in both dtypes);
  anything else (another rank or dtype) is XLA's. Equal to XLA's within the dtype's rounding.
- 'auto' (the default): oneDNN's for bfloat16 activations in a single-device program on the CPU backend
  (`choice`), XLA's for everything else, float32 included.

Why, and why bfloat16 only: in a CIFAR ResNet-20 train step at batch 128 with oneDNN's convolutions on this
project's CPU, oneDNN's batch norms make the bfloat16 step 1.25-1.4x faster (XLA:CPU computes bfloat16 arithmetic
through float32 conversions, pass after pass), but the float32 step 0.88x as fast: there XLA fuses the
normalisation with the ReLU and the shortcut's add around it, which a call out of the program prevents
(`python -m benchmarks.bn_impl_step`, benchmarks/RESULTS.md). Inference (the moving averages) is a multiply-add that
XLA fuses into its neighbours, and stays XLA's everywhere.

The statistics come back under `stop_gradient`: they feed the moving averages, never the loss. Limits of the
'onednn' path, as for the convolutions: no forward-mode or second derivatives, and under `jax.vmap` the calls run
once per mapped element.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from resnet_jax.kernels import choice, ffi, onednn

BN_IMPLS = choice.IMPLS


def check(impl: str) -> None:
    """`choice.check` of `bn_impl`."""
    choice.check("bn_impl", impl)


def resolve(impl: str) -> str:
    """'xla' or 'onednn': what `impl` means in this process (`choice.resolve`)."""
    return choice.resolve("bn_impl", impl, "batch normalisations", _onednn_works)


def uses_onednn(impl: str, dtype: Any) -> bool:
    """Whether `impl` asks oneDNN for the batch norms of `dtype` activations in this process (see the docstring)."""
    if impl == "auto" and jnp.dtype(dtype) != jnp.bfloat16:
        check(impl)
        return False
    return resolve(impl) == "onednn"


def normalize(
    x: jax.Array, scale: jax.Array, bias: jax.Array, *, group_size: int, epsilon: float, dtype: Any, impl: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training's batch normalisation of `x` over its last axis, statistics per group of `group_size` consecutive
    examples: (y of `dtype` and x's shape, mean, biased variance), the statistics (groups, channels) float32.

    Under `impl` 'onednn' (and 'auto' for bfloat16, where it resolves so), oneDNN computes it where it can: raises a
    RuntimeError naming what oneDNN refused when asked for by name, else falls back to XLA's with one log line."""
    groups = x.shape[0] // group_size
    name = choice.onednn_dtype(x.dtype)
    if uses_onednn(impl, x.dtype) and x.ndim == 4 and name is not None and x.dtype == jnp.dtype(dtype):
        try:
            _prepare(name, x.shape, groups, float(epsilon))
        except Exception as error:
            if impl == "onednn":
                raise RuntimeError(f"bn_impl='onednn': oneDNN cannot compute this batch norm: {error}") from error
            logging.warning("oneDNN cannot compute a batch norm of %s (%s); XLA computes it.", x.shape, error)
        else:
            y, mean, var = _onednn(x, scale.astype(jnp.float32), bias.astype(jnp.float32), groups, float(epsilon))
            return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    y, mean, var = _xla(x, scale, bias, groups, epsilon, dtype)
    return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)


def _xla(x, scale, bias, groups: int, epsilon: float, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    xg = x.astype(jnp.float32).reshape(groups, x.shape[0] // groups, *x.shape[1:])
    axes = tuple(range(1, xg.ndim - 1))
    mean = jnp.mean(xg, axes, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(xg), axes, keepdims=True) - jnp.square(mean), 0.0)
    mul = scale * jax.lax.rsqrt(var + epsilon)
    y = xg * mul + (bias - mean * mul)
    stats = (groups, x.shape[-1])
    return y.reshape(x.shape).astype(dtype), mean.reshape(stats), var.reshape(stats)


def _prepare(dtype: str, shape: tuple[int, ...], groups: int, epsilon: float) -> None:
    """Makes the primitives and FFI targets at trace time, so that what oneDNN refuses fails here, in Python."""
    if shape[0] % groups:
        raise ValueError(f"{groups} groups do not divide a batch of {shape[0]}")
    onednn.prepare_batch_norm(dtype, (shape[0] // groups, *shape[1:]), epsilon)
    _target("forward", dtype, epsilon)
    _target("backward", dtype, epsilon)


def _target(kind: str, dtype: str, epsilon: float) -> str:
    """The XLA FFI target that runs oneDNN's batch norm `kind` ('forward', 'backward') of `dtype` and `epsilon`."""
    name = f"resnet_jax_onednn_batch_norm_{kind}_{dtype}_eps{np.float32(epsilon).view(np.uint32):08x}"
    x, stat, vector = (4, ffi.DTYPES[dtype]), (2, ffi.DTYPES["float32"]), (1, ffi.DTYPES["float32"])
    if kind == "forward":
        signature = ffi.Signature(args=(x, vector, vector), results=(x, stat, stat))

        def function(args: list[ffi.Buffer], results: list[ffi.Buffer]) -> None:
            (x, scale, shift), (y, mean, var) = args, results
            onednn.batch_norm_forward(dtype, epsilon, x, scale, shift, y, mean, var)
    else:
        signature = ffi.Signature(args=(x, x, vector, stat, stat), results=(x, stat, stat))

        def function(args: list[ffi.Buffer], results: list[ffi.Buffer]) -> None:
            (x, dy, scale, mean, var), (dx, dscale, dshift) = args, results
            onednn.batch_norm_backward(dtype, epsilon, x, dy, scale, mean, var, dx, dscale, dshift)

    return ffi.register(name, function, signature)


def _call(kind: str, epsilon: float, results, *operands: jax.Array):
    dtype = jnp.dtype(operands[0].dtype).name
    call = jax.ffi.ffi_call(_target(kind, dtype, epsilon), results, vmap_method="sequential")
    return call(*operands)


def _shapes(x: jax.Array, groups: int):
    stat = jax.ShapeDtypeStruct((groups, x.shape[-1]), jnp.float32)
    return jax.ShapeDtypeStruct(x.shape, x.dtype), stat


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _onednn(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float):
    like_x, stat = _shapes(x, groups)
    return tuple(_call("forward", epsilon, (like_x, stat, stat), x, scale, bias))


def _onednn_forward(x, scale, bias, groups, epsilon):
    y, mean, var = _onednn(x, scale, bias, groups, epsilon)
    return (y, mean, var), (x, scale, mean, var)


def _onednn_backward(groups, epsilon, residuals, cotangents):
    x, scale, mean, var = residuals
    dy = cotangents[0]  # the statistics' cotangents are zero: `normalize` returns them under stop_gradient
    like_x, stat = _shapes(x, groups)
    dx, dscale, dshift = _call("backward", epsilon, (like_x, stat, stat), x, dy.astype(x.dtype), scale, mean, var)
    return dx, jnp.sum(dscale, axis=0), jnp.sum(dshift, axis=0)


_onednn.defvjp(_onednn_forward, _onednn_backward)


@functools.cache
def _onednn_works() -> bool:
    """Whether a small oneDNN batch norm and its gradients give XLA's in this process (once; `choice.agrees`)."""
    x = np.linspace(-1, 2, 4 * 3 * 3 * 5, dtype=np.float32).reshape(4, 3, 3, 5) ** 2
    scale, bias = np.linspace(0.5, 2, 5, dtype=np.float32), np.linspace(-1, 1, 5, dtype=np.float32)
    w = np.cos(np.arange(x.size, dtype=np.float32)).reshape(x.shape)

    def value_and_grads(normalise):
        def loss(x, scale, bias):
            y, mean, var = normalise(x, scale, bias, 2, 1e-5)
            return jnp.sum(y * w), (mean, var)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

    def xla(x, scale, bias, groups, epsilon):
        return _xla(x, scale, bias, groups, epsilon, jnp.float32)

    def ours(x, scale, bias, groups, epsilon):
        _prepare("float32", x.shape, groups, epsilon)
        return _onednn(x, scale, bias, groups, epsilon)

    return choice.agrees(
        "bn_impl", "batch normalisations", value_and_grads(ours), value_and_grads(xla), x, scale, bias,
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
