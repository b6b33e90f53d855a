"""The convolutions of `conv_impl='onednn'` against `lax.conv_general_dilated`, and how 'auto' chooses."""

import ctypes
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_jax.kernels import conv as conv_module
from resnet_jax.kernels import ffi, onednn
from resnet_jax.kernels.conv import (
    CONV_IMPLS,
    conv_general_dilated_for,
    onednn_conv_general_dilated,
    resolve,
    scans_well,
)
from resnet_jax.models import create_model

# resnet_jax[train] installs oneDNN on Linux x86-64 (setup.cfg): there it must load, and these tests run, where JAX
# computes on the CPU (on an accelerator 'auto' never picks oneDNN, and the tests' programs would run elsewhere).
pytestmark = pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64" and jax.default_backend() == "cpu"),
    reason="oneDNN's wheel is for Linux x86-64, and its convolutions for JAX's CPU backend",
)
DIMS = ("NHWC", "HWIO", "NHWC")

# Every convolution the nets compute: (input side, in channels, out channels, kernel, stride); padding kernel // 2.
# The 3x3s of the CIFAR and ImageNet blocks (stride 1 and 2, even and odd sides), the 7x7/2 ImageNet stem on its
# 3 channels, the 1x1 projections (stride 1 and 2) and the deep stem's 3x3/2 on 3 channels.
SHAPES = [
    (8, 16, 16, 3, 1),
    (9, 16, 32, 3, 2),
    (8, 32, 64, 3, 2),
    (7, 64, 64, 3, 1),
    (15, 3, 16, 7, 2),
    (8, 16, 32, 1, 1),
    (9, 32, 64, 1, 2),
    (10, 3, 8, 3, 2),
]


def _loss(conv):
    def loss(x, w, g):
        return jnp.sum(conv(x, w) * g)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _relative_error(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


# The largest error either dtype's rounding allows, relative to the largest value: float32 sums in another order;
# bfloat16 is summed in float32 by both and rounded once to its 8-bit significand (half a unit: 2**-9), so the two
# differ by at most one unit in the last place of the result, 2**-8 of it, at the largest value.
TOLERANCE = {jnp.float32: 2e-6, jnp.bfloat16: 2**-8}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("side,c_in,c_out,kernel,stride", SHAPES)
def test_equals_lax_in_value_and_both_gradients(side, c_in, c_out, kernel, stride, dtype):
    rng = np.random.default_rng(kernel * 100 + side)
    x = jnp.asarray(rng.normal(size=(3, side, side, c_in)), dtype)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, c_in, c_out)), dtype)
    padding = [(kernel // 2, kernel // 2)] * 2
    ours = lambda x, w: onednn_conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DIMS)  # noqa: E731
    theirs = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DIMS)  # noqa: E731
    y, y_ref = jax.jit(ours)(x, w), jax.jit(theirs)(x, w)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype == dtype
    assert _relative_error(y, y_ref) < TOLERANCE[dtype]
    g = jnp.asarray(rng.normal(size=y.shape), dtype)
    (_, (dx, dw)), (_, (dx_ref, dw_ref)) = _loss(ours)(x, w, g), _loss(theirs)(x, w, g)
    assert dx.dtype == dw.dtype == dtype
    assert _relative_error(dx, dx_ref) < TOLERANCE[dtype]
    assert _relative_error(dw, dw_ref) < TOLERANCE[dtype]
    # oneDNN computed all three: its FFI calls are in the program (not XLA's convolution)
    program = str(jax.make_jaxpr(_loss(ours))(x, w, g))
    for kind in ("forward", "input_grad", "kernel_grad"):
        assert f"resnet_jax_onednn_{kind}_{jnp.dtype(dtype).name}" in program
    assert "conv_general_dilated" not in program
    # the same bits again: deterministic on one machine
    (_, (dx2, dw2)) = _loss(ours)(x, w, g)
    assert (np.asarray(dx2) == np.asarray(dx)).all() and (np.asarray(dw2) == np.asarray(dw)).all()


def test_what_onednn_does_not_take_is_lax_exactly():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 4)), jnp.float32)
    x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    cases = [  # (args, kwargs): float16, a float32 result of bfloat16, a padding string, dilation, groups, NCHW
        ((x.astype(jnp.float16), w.astype(jnp.float16), (1, 1), [(1, 1)] * 2), {"dimension_numbers": DIMS}),
        ((x16, w16, (1, 1), [(1, 1)] * 2), {"dimension_numbers": DIMS, "preferred_element_type": jnp.float32}),
        ((x, w, (1, 1), "SAME"), {"dimension_numbers": DIMS}),
        ((x, w, (1, 1), [(2, 2)] * 2), {"rhs_dilation": (2, 2), "dimension_numbers": DIMS}),
        ((x, w[:, :, :2], (1, 1), [(1, 1)] * 2), {"feature_group_count": 2, "dimension_numbers": DIMS}),
        ((x.transpose(0, 3, 1, 2), w, (1, 1), [(1, 1)] * 2), {"dimension_numbers": ("NCHW", "HWIO", "NCHW")}),
    ]
    for args, kwargs in cases:
        ours = lambda x, w, a=args, kw=kwargs: onednn_conv_general_dilated(x, w, *a[2:], **kw)  # noqa: E731
        theirs = lambda x, w, a=args, kw=kwargs: lax.conv_general_dilated(x, w, *a[2:], **kw)  # noqa: E731
        assert (np.asarray(jax.jit(ours)(*args[:2])) == np.asarray(jax.jit(theirs)(*args[:2]))).all(), kwargs
        assert "ffi_call" not in str(jax.make_jaxpr(ours)(*args[:2]))


def test_works_inside_scan_and_vmap():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 3, 4, 8, 8, 16)), jnp.float32)  # [members, steps, N, H, W, C]
    w = jnp.asarray(rng.normal(size=(2, 3, 3, 16, 16)), jnp.float32)

    def conv_with(f):
        return lambda x, w: jnp.sum(f(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=DIMS) ** 2)

    def scanned(f):
        def body(w, x):
            loss, grad = jax.value_and_grad(conv_with(f), argnums=1)(x, w)
            return w - 1e-4 * grad, loss

        return jax.jit(jax.vmap(lambda w, x: jax.lax.scan(body, w, x)))

    (w_ours, loss_ours), (w_ref, loss_ref) = (
        scanned(onednn_conv_general_dilated)(w, x),
        scanned(lax.conv_general_dilated)(w, x),
    )
    assert _relative_error(loss_ours, loss_ref) < 2e-6 and _relative_error(w_ours, w_ref) < 2e-6


@pytest.mark.parametrize("dtype,nudge", [("float32", 1e-6), ("bfloat16", 2**-8)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name,side", [("resnet20", 32)])  # ResNet-50: test_train_step_vs_torch.py
def test_nets_give_xla_s_logits_gradients_and_bn_statistics(name, side, dtype, nudge):
    """Within what the dtype's rounding can do: the distance to XLA's results is compared with the distance between
    XLA's results for the input and for the input changed by about its rounding (float32: one part in a million;
    bfloat16: one part in 256). Deep untrained nets amplify rounding: an untrained ResNet-50's gradients at 64x64
    move by about 1% under the float32 nudge, ResNet-20's by about 7% in bfloat16; an error in a convolution moves
    them by 100%."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, side, side, 3)), jnp.float32)
    nudged = x * (1 + nudge * jnp.asarray(rng.normal(size=x.shape), jnp.float32))

    def outputs(impl, x):
        model = create_model(name, num_classes=10, conv_impl=impl, bn_impl=impl, stride_on_3x3=True, dtype=dtype)
        variables = model.init(jax.random.key(0), x)

        def loss(params):
            logits, updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(jax.nn.log_softmax(logits.astype(jnp.float32))[:, 0]), (logits, updates)

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        program = str(jax.make_jaxpr(step)(variables["params"]))
        assert ("resnet_jax_onednn_kernel_grad" in program) == (impl == "onednn")  # oneDNN ran where asked
        assert ("resnet_jax_onednn_batch_norm_backward" in program) == (impl == "onednn")
        return jax.tree.leaves(step(variables["params"]))

    def distance(a, b):
        a, b = ([jnp.asarray(p, jnp.float32) for p in t] for t in (a, b))
        return np.sqrt(
            sum(float(jnp.sum((p - q) ** 2)) for p, q in zip(a, b, strict=True)) / sum(float(jnp.sum(q**2)) for q in b)
        )

    xla = outputs("xla", x)
    assert distance(outputs("onednn", x), xla) < max(2 * distance(outputs("xla", nudged), xla), 1e-5)


def test_auto_is_onednn_on_one_cpu_device_and_the_step_loop_scans():
    assert onednn.available(), onednn.unavailable_reason()
    assert jax.default_backend() == "cpu" and jax.device_count() == 1
    assert resolve("auto") == "onednn" and resolve("onednn") == "onednn" and resolve("xla") == "xla"
    assert scans_well("auto") and scans_well("onednn") and not scans_well("xla")
    assert scans_well("auto", jnp.bfloat16) and scans_well("onednn", jnp.bfloat16)
    assert not scans_well("auto", jnp.float16) and not scans_well("onednn", jnp.float16)  # XLA computes those
    with pytest.raises(ValueError, match="Valid values"):
        resolve("cudnn")
    assert CONV_IMPLS == ("auto", "xla", "onednn")
    assert conv_general_dilated_for("xla") is lax.conv_general_dilated


def _run(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_program_with_onednn_convolutions_is_kept_in_the_persistent_compilation_cache(tmp_path):
    """Why ffi.py registers FFI targets rather than using jax.experimental.buffer_callback: a restarted CPU run
    finds its compiled step in `--compilation_cache` only if programs calling oneDNN can be persisted."""
    code = (
        "import jax, jax.numpy as jnp\n"
        f"jax.config.update('jax_compilation_cache_dir', {str(tmp_path)!r})\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "from resnet_jax.kernels.conv import onednn_conv_general_dilated as conv\n"
        "f = jax.jit(lambda x, w: conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
        "print(jax.make_jaxpr(f)(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))).eqns[0].params['jaxpr'])\n"
        "f(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))).block_until_ready()"
    )
    assert "resnet_jax_onednn_forward" in _run(code)  # the program calls oneDNN
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("jit__lambda")], sorted(tmp_path.iterdir())


def test_auto_keeps_xla_on_several_devices_and_without_onednn(tmp_path):
    code = "from resnet_jax.kernels.conv import resolve, scans_well; print(resolve('auto'), scans_well('auto'))"
    assert _run(code, XLA_FLAGS="--xla_force_host_platform_device_count=2") == "xla False"
    assert _run(code, RESNET_JAX_ONEDNN_LIBRARY="/nonexistent/libdnnl.so.3") == "xla False"
    asked = (
        "from resnet_jax.kernels.conv import resolve\n"
        "try:\n    resolve('onednn')\nexcept ValueError as e:\n    print(type(e).__name__, e)"
    )
    message = _run(asked, RESNET_JAX_ONEDNN_LIBRARY="/nonexistent/libdnnl.so.3")
    assert message.startswith("ConfigError conv_impl='onednn'") and "/nonexistent/libdnnl.so.3" in message
    assert "pip install onednn-cpu-gomp" in message
    cli = subprocess.run(
        [sys.executable, "-m", "resnet_jax.main", "--config=configs/cifar10.py:resnet20,quick",
         f"--workdir={tmp_path / 'run'}", "--config.model.conv_impl=onednn"],
        env={**os.environ, "RESNET_JAX_ONEDNN_LIBRARY": "/nonexistent/libdnnl.so.3"}, capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[1], timeout=120,
    )  # fmt: skip
    lines = cli.stderr.strip().splitlines()
    assert cli.returncode == 2 and "conv_impl='onednn' asks for oneDNN" in lines[-1], cli.stderr
    assert not (tmp_path / "run").exists()


def test_an_ffi_handler_writes_xla_s_buffers_in_place_and_its_failure_is_xla_s_error():
    def double(args, results):
        ((x, shape),), ((y, _),) = args, results
        size = int(np.prod(shape))
        source = np.ctypeslib.as_array(ctypes.cast(x, ctypes.POINTER(ctypes.c_float)), (size,))
        np.ctypeslib.as_array(ctypes.cast(y, ctypes.POINTER(ctypes.c_float)), (size,))[:] = 2 * source

    def broken(args, results):
        raise ValueError("deliberately broken")

    x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    one = ffi.Signature.uniform(args=1, results=1, rank=2, dtype=ffi.DTYPES["float32"])
    doubled = jax.jit(jax.ffi.ffi_call(ffi.register("test_conv_double", double, one), out))(x)
    assert (np.asarray(doubled) == 2 * np.asarray(x)).all()
    with pytest.raises(Exception, match="test_conv_broken: ValueError: deliberately broken"):
        jax.jit(jax.ffi.ffi_call(ffi.register("test_conv_broken", broken, one), out))(x).block_until_ready()

    # Any exception at all (Ctrl-C inside the handler, a message that cannot be encoded) is XLA's error too: none
    # escapes the callback, which would abort the process.
    def interrupted(args, results):
        raise KeyboardInterrupt

    def unencodable(args, results):
        raise ValueError("lone surrogate \udc80")

    with pytest.raises(Exception, match="test_conv_interrupted: KeyboardInterrupt"):
        jax.jit(jax.ffi.ffi_call(ffi.register("test_conv_interrupted", interrupted, one), out))(x).block_until_ready()
    with pytest.raises(Exception, match=r"test_conv_unencodable: ValueError: lone surrogate \\udc80"):
        jax.jit(jax.ffi.ffi_call(ffi.register("test_conv_unencodable", unencodable, one), out))(x).block_until_ready()

    # A call that does not match the handler's signature is XLA's error before any buffer is read: another dtype,
    # another rank, another number of arguments.
    call = jax.ffi.ffi_call("test_conv_double", out)
    with pytest.raises(
        Exception, match="test_conv_double: the call does not match the handler: argument 0 has XLA dtype 16"
    ):
        jax.jit(jax.ffi.ffi_call("test_conv_double", jax.ShapeDtypeStruct(x.shape, jnp.bfloat16)))(
            x.astype(jnp.bfloat16)
        ).block_until_ready()
    with pytest.raises(Exception, match="argument 0 has XLA dtype 11 and rank 1, expected dtype 11 and rank 2"):
        jax.jit(jax.ffi.ffi_call("test_conv_double", jax.ShapeDtypeStruct((6,), x.dtype)))(
            x.reshape(6)
        ).block_until_ready()
    with pytest.raises(Exception, match="2 arguments, expected 1"):
        jax.jit(call)(x, x).block_until_ready()


def test_auto_keeps_xla_when_the_handler_cannot_read_xla_s_call_and_onednn_fails_in_one_line():
    """A jaxlib whose FFI structs differ from the handler's mirror (simulated: the call frame it expects made larger
    than XLA's): the handler refuses the call, 'auto' finds out from its one-time check and keeps XLA's convolutions
    with one warning, and 'onednn' named explicitly fails with one line naming the mismatch."""
    patch = "from resnet_jax.kernels import ffi; ffi._FRAME_SIZE = 10**6\n"
    code = patch + "from resnet_jax.kernels.conv import resolve; print(resolve('auto'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "xla", result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "failed their check" in line]
    assert "XLA's call frame is" in warning and "XLA computes them (conv_impl='auto')" in warning
    asked = patch + (
        "import jax.numpy as jnp\n"
        "from resnet_jax.kernels.conv import onednn_conv_general_dilated as conv\n"
        "conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), (1, 1), [(1, 1)] * 2,"
        " dimension_numbers=('NHWC', 'HWIO', 'NHWC')).block_until_ready()"
    )
    result = subprocess.run([sys.executable, "-c", asked], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "the call does not match the handler: XLA's call frame is" in result.stderr
    assert "Aborted" not in result.stderr and "free()" not in result.stderr


def test_auto_keeps_xla_when_onednn_cannot_make_its_check_s_convolution(monkeypatch, caplog):
    """The one-time check asks oneDNN strictly: a primitive it cannot make fails the check (rather than the check's
    convolution quietly falling back to XLA's and passing). In this process, so that mutation testing sees it."""

    def refuse(*args):
        raise RuntimeError("primitive refused")

    monkeypatch.setattr(onednn, "prepare", refuse)
    conv_module._onednn_works.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert resolve("auto") == "xla"
    finally:
        monkeypatch.undo()
        conv_module._onednn_works.cache_clear()  # the next test asks the real oneDNN again
    (warning,) = [r.getMessage() for r in caplog.records if "failed their check" in r.getMessage()]
    assert "primitive refused" in warning


def test_a_convolution_onednn_refuses_is_xla_s_under_auto_and_an_error_when_asked_for(caplog):
    """Negative padding: lax takes it, oneDNN refuses to make the primitive. 'auto' computes it (and its gradients)
    with XLA and says so in one line; 'onednn' named explicitly, or oneDNN's function called as it is, raises, naming
    the reason."""

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 3, 4)), jnp.float32)
    padding = ((-1, 1), (1, 1))

    def loss(conv, x, w):
        return jnp.sum(conv(x, w, (1, 1), padding, dimension_numbers=DIMS) ** 2)

    expected = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w), argnums=(0, 1))(x, w)
    got = jax.value_and_grad(lambda x, w: loss(conv_general_dilated_for("auto"), x, w), argnums=(0, 1))(x, w)
    for ours, theirs in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert "oneDNN cannot compute a convolution of (2, 8, 8, 3) by (3, 3, 3, 4)" in caplog.text
    with pytest.raises(RuntimeError, match="conv_impl='onednn': oneDNN cannot compute this convolution"):
        loss(conv_general_dilated_for("onednn"), x, w)
    with pytest.raises(RuntimeError, match="oneDNN cannot compute this convolution"):
        loss(onednn_conv_general_dilated, x, w)


def test_the_primitive_cache_is_bounded_and_an_evicted_primitive_is_made_again(monkeypatch):
    """At most MAX_PLANS primitives are kept (the least recently used are destroyed); a program whose primitive was
    evicted makes it again and computes the same."""
    library = onednn._load()
    monkeypatch.setattr(onednn, "MAX_PLANS", 3)
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 4)), jnp.float32)
    convs = {}
    for side in (5, 6, 7):  # three shapes: three forward primitives each time, and more for the gradients
        x = jnp.asarray(rng.normal(size=(1, side, side, 4)), jnp.float32)
        conv = jax.jit(lambda x, w: onednn_conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=DIMS))
        convs[side] = (conv, x, conv(x, w))
        assert library.plans <= 3
    for conv, x, first in convs.values():  # the 5x5 primitives were evicted long ago
        assert (np.asarray(conv(x, w)) == np.asarray(first)).all()
        reference = lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=DIMS)
        assert _relative_error(first, reference) < 2e-6
    assert library.plans <= 3
