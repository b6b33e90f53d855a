"""Training's batch norm under `bn_impl='onednn'` against XLA's and a float64 reference, and how 'auto' chooses."""

import functools
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.kernels import batch_norm, onednn
from resnet_jax.models import create_model

# As tests/test_conv.py: oneDNN is installed, and must load, on Linux x86-64 with JAX on the CPU.
pytestmark = pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64" and jax.default_backend() == "cpu"),
    reason="oneDNN's wheel is for Linux x86-64, and its kernels for JAX's CPU backend",
)

# Every batch norm the nets compute, as (side, channels), at a small batch in two groups: the CIFAR stages; the
# ImageNet stem (112), the bottleneck stages' reduced and expanded widths, and the deep stem's 32 channels.
SHAPES = [(32, 16), (16, 32), (8, 64), (112, 64), (56, 256), (28, 128), (14, 1024), (7, 2048), (7, 512), (56, 32)]

# Relative to the largest value. float32: the two sum in other orders (measured: up to about 5e-6 on these shapes).
# bfloat16: both compute in float32 and round the output once to 8 significant bits, so a value near a rounding
# boundary may land one unit in the last place (2**-8 of the largest value) apart, and a gradient, computed from the
# rounded output's cotangent, a unit more.
TOLERANCE = {jnp.float32: 3e-5, jnp.bfloat16: 2**-7}


def _loss(impl, dtype, groups):
    def loss(x, scale, bias, g):
        y, mean, var = batch_norm.normalize(
            x, scale, bias, group_size=x.shape[0] // groups, epsilon=1e-5, dtype=dtype, impl=impl
        )
        return jnp.sum((y * g).astype(jnp.float32)), (y, mean, var)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _relative_error(a, b) -> float:
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _reference(x, scale, bias, g, groups):
    """The normalisation and its gradients in float64 NumPy, written from the formulas (Ioffe and Szegedy, 2015)."""
    x, g = (np.asarray(a, np.float64).reshape(groups, -1, x.shape[-1]) for a in (x, g))
    mean, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    x_hat = (x - mean) / np.sqrt(var + 1e-5)
    count = x.shape[1]
    dbias = g.sum(1, keepdims=True)
    dscale = (g * x_hat).sum(1, keepdims=True)
    dx = scale / np.sqrt(var + 1e-5) * (g - dbias / count - x_hat * dscale / count)
    y = x_hat * scale + bias
    return y, mean[:, 0], var[:, 0], dx, dscale.sum((0, 1)), dbias.sum((0, 1))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("side,channels", SHAPES)
def test_equals_xla_and_float64_in_value_statistics_and_gradients(side, channels, dtype):
    rng = np.random.default_rng(side * 10_000 + channels)
    x = jnp.asarray(rng.normal(1.5, 2.0, size=(4, side, side, channels)), dtype)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32)
    bias = jnp.asarray(rng.normal(size=channels), jnp.float32)
    g = jnp.asarray(rng.normal(size=x.shape), dtype)
    (_, ours), grads = _loss("onednn", dtype, 2)(x, scale, bias, g)
    (_, theirs), grads_ref = _loss("xla", dtype, 2)(x, scale, bias, g)
    y, mean, var, dx, dscale, dbias = _reference(x, scale, bias, g, 2)
    assert ours[0].dtype == grads[0].dtype == dtype and ours[1].shape == ours[2].shape == (2, channels)
    for got, xla, exact in zip((*ours, *grads), (*theirs, *grads_ref), (y, mean, var, dx, dscale, dbias), strict=True):
        assert _relative_error(got, xla) < TOLERANCE[dtype]
        exact = np.reshape(exact, np.shape(got))
        assert _relative_error(got, exact) <= 2 * max(_relative_error(xla, exact), TOLERANCE[jnp.float32])
    # oneDNN computed it: its two FFI calls are the program's batch norm, and the same inputs give the same bits
    program = str(jax.make_jaxpr(_loss("onednn", dtype, 2))(x, scale, bias, g))
    name = jnp.dtype(dtype).name
    assert f"resnet_jax_onednn_batch_norm_forward_{name}" in program
    assert f"resnet_jax_onednn_batch_norm_backward_{name}" in program
    assert "rsqrt" not in program
    (_, again), grads_again = _loss("onednn", dtype, 2)(x, scale, bias, g)
    for a, b in zip((*ours, *grads), (*again, *grads_again), strict=True):
        assert (np.asarray(a) == np.asarray(b)).all()


def test_groups_are_consecutive_examples_and_a_net_s_moving_averages_match_xla_s():
    """One group per example: each example normalised alone (the statistics of example i are row i); and the
    moving averages a ResNet-20 train step writes are XLA's."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(3, 4, 4, 8)) * np.arange(1, 4)[:, None, None, None], jnp.float32)
    ones, zeros = jnp.ones(8), jnp.zeros(8)
    y, mean, var = batch_norm.normalize(x, ones, zeros, group_size=1, epsilon=1e-5, dtype=jnp.float32, impl="onednn")
    np.testing.assert_allclose(mean, np.asarray(x).mean((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, np.asarray(x).var((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(1, 2)), 1.0, rtol=1e-3)

    images = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)

    def moving_averages(impl):
        model = create_model("resnet20", num_classes=10, bn_impl=impl, bn_group_size=2, bn_unbiased_var=True)
        variables = model.init(jax.random.key(0), images)
        _, updates = jax.jit(lambda v: model.apply(v, images, train=True, mutable=["batch_stats"]))(variables)
        return jax.tree.leaves(updates["batch_stats"])

    for ours, theirs in zip(moving_averages("onednn"), moving_averages("xla"), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-6)


def test_what_onednn_does_not_take_is_xla_s_exactly():
    """float16, a float32 input normalised to bfloat16, and a rank other than 4 are XLA's, with no FFI call."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(4, 5, 5, 6)), jnp.float32)
    for x_, dtype in ((x.astype(jnp.float16), jnp.float16), (x, jnp.bfloat16), (x.reshape(4, 150), jnp.float32)):
        s, b = jnp.ones(x_.shape[-1]), jnp.zeros(x_.shape[-1])

        def under(impl, dtype=dtype, s=s, b=b):
            return lambda x: batch_norm.normalize(x, s, b, group_size=2, epsilon=1e-5, dtype=dtype, impl=impl)

        ours = under("onednn")
        for a, b_ in zip(jax.jit(ours)(x_), jax.jit(under("xla"))(x_), strict=True):
            assert (np.asarray(a) == np.asarray(b_)).all()
        assert "ffi_call" not in str(jax.make_jaxpr(ours)(x_))


def test_works_inside_scan_and_vmap():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 3, 4, 6, 6, 8)), jnp.float32)  # [members, steps, N, H, W, C]

    def scanned(impl):
        def body(scale, x):
            def loss(scale):
                y, _, _ = batch_norm.normalize(x, scale, jnp.zeros(8), group_size=2, epsilon=1e-5,
                                               dtype=jnp.float32, impl=impl)  # fmt: skip
                return jnp.sum(jnp.sin(y))

            value, grad = jax.value_and_grad(loss)(scale)
            return scale - 0.1 * grad, value

        return jax.jit(jax.vmap(lambda x: jax.lax.scan(body, jnp.ones(8), x)))(x)

    (scale_ours, loss_ours), (scale_ref, loss_ref) = scanned("onednn"), scanned("xla")
    assert _relative_error(loss_ours, loss_ref) < 1e-5 and _relative_error(scale_ours, scale_ref) < 1e-5


def test_a_batch_norm_onednn_refuses_is_xla_s_under_auto_and_an_error_when_asked_for(monkeypatch, caplog):
    """oneDNN 3.x takes every batch norm the nets make, so its refusal is simulated: 'auto' (bfloat16, where it asks
    for oneDNN) computes the batch norm and its gradients with XLA and says so in one line; 'onednn' named explicitly
    raises, naming the reason."""

    assert batch_norm.resolve("auto") == "onednn"  # its one-time check passed before the refusal
    prepare = onednn.prepare_batch_norm

    def refuse(dtype, group_shape, *args, **kwargs):
        if tuple(group_shape) == (2, 5, 5, 6):
            raise RuntimeError("oneDNN (libdnnl.so.3): dnnl_batch_normalization_forward_primitive_desc_create failed")
        return prepare(dtype, group_shape, *args, **kwargs)

    monkeypatch.setattr(onednn, "prepare_batch_norm", refuse)
    x = jnp.asarray(np.random.default_rng(8).normal(size=(4, 5, 5, 6)), jnp.bfloat16)
    scale, bias, g = jnp.full(6, 2.0), jnp.zeros(6), jnp.cos(jnp.arange(x.size).reshape(x.shape)).astype(x.dtype)
    (_, auto), grads = _loss("auto", jnp.bfloat16, 2)(x, scale, bias, g)
    (_, xla), grads_xla = _loss("xla", jnp.bfloat16, 2)(x, scale, bias, g)
    for a, b in zip((*auto, *grads), (*xla, *grads_xla), strict=True):
        assert (np.asarray(a) == np.asarray(b)).all()
    assert "oneDNN cannot compute a batch norm of (4, 5, 5, 6)" in caplog.text
    with pytest.raises(RuntimeError, match="bn_impl='onednn': oneDNN cannot compute this batch norm: .*failed"):
        _loss("onednn", jnp.bfloat16, 2)(x, scale, bias, g)


def test_auto_is_onednn_for_bfloat16_on_one_cpu_device_and_xla_elsewhere_or_when_its_check_fails():
    """'auto' asks oneDNN for bfloat16 batch norms only: in float32 XLA's fused ones make the step faster."""
    assert batch_norm.resolve("auto") == "onednn" and batch_norm.resolve("xla") == "xla"
    assert batch_norm.uses_onednn("auto", jnp.bfloat16) is True and batch_norm.uses_onednn("auto", jnp.float32) is False
    assert batch_norm.uses_onednn("onednn", jnp.float32) and not batch_norm.uses_onednn("xla", jnp.bfloat16)
    images = jnp.zeros((2, 32, 32, 3))
    for dtype, expected in ((jnp.bfloat16, True), (jnp.float32, False)):
        model = create_model("resnet20", num_classes=10, dtype=dtype)
        variables = model.init(jax.random.key(0), images)
        apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
        program = str(jax.make_jaxpr(apply)(variables, images))
        assert ("resnet_jax_onednn_batch_norm_forward" in program) == expected
    assert batch_norm.BN_IMPLS == ("auto", "xla", "onednn")
    with pytest.raises(ValueError, match="Invalid bn_impl 'cudnn'"):
        batch_norm.resolve("cudnn")
    with pytest.raises(ValueError, match="Invalid value 'mkl' for option 'bn_impl'"):
        create_model("resnet20", num_classes=10, bn_impl="mkl")

    def run(code, **env):
        result = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.strip(), result.stderr

    code = "from resnet_jax.kernels.batch_norm import resolve; print(resolve('auto'))"
    assert run(code, XLA_FLAGS="--xla_force_host_platform_device_count=2")[0] == "xla"
    assert run(code, RESNET_JAX_ONEDNN_LIBRARY="/nonexistent/libdnnl.so.3")[0] == "xla"
    asked = "from resnet_jax.kernels.batch_norm import resolve\ntry:\n    resolve('onednn')\nexcept ValueError as e:\n    print(type(e).__name__, e)"  # noqa: E501
    message = run(asked, RESNET_JAX_ONEDNN_LIBRARY="/nonexistent/libdnnl.so.3")[0]
    assert message.startswith("ConfigError bn_impl='onednn' asks for oneDNN")
    assert "pip install onednn-cpu-gomp" in message
    # the handler cannot read XLA's call (simulated: the call frame it expects made larger than XLA's)
    out, err = run("from resnet_jax.kernels import ffi; ffi._FRAME_SIZE = 10**6\n" + code)
    (warning,) = [line for line in err.splitlines() if "failed their check" in line]
    assert out == "xla" and "oneDNN's batch normalisations failed their check (" in warning
    assert "XLA's call frame is" in warning and "(bn_impl='auto')" in warning
