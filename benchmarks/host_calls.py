"""Our FFI handler (`resnet_jax/kernels/ffi.py`) against `jax.experimental.buffer_callback`: the cost of a call.

    python -m benchmarks.host_calls [--calls=57] [--megabytes=8] [--rounds=15]

Both hand a Python function XLA's own buffers. The program under test is the shape of a ResNet-20 train step's host
calls: `--calls` calls in a chain (57: its convolutions, forward and both gradients), each copying an activation of
`--megabytes` with `ctypes.memmove` (the work a oneDNN call hands to a library), an XLA add between calls so that
XLA cannot merge them. Each program is jitted, warmed up, then timed in alternating rounds; prints one JSON line per
mechanism (median and min ms per program) and a last line with the ratio and the machine. `ffi.py`'s docstring says
why we keep our handler at equal speed.
"""

from __future__ import annotations

import ctypes
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.experimental.buffer_callback import buffer_callback

from resnet_jax.core.machine import describe
from resnet_jax.kernels import ffi

flags.DEFINE_integer("calls", 57, "Host calls per program.")
flags.DEFINE_integer("megabytes", 8, "Size of the float32 buffer each call copies.")
flags.DEFINE_integer("rounds", 15, "Timed rounds per mechanism, alternating.")
FLAGS = flags.FLAGS


def _copy(args: list[ffi.Buffer], results: list[ffi.Buffer]) -> None:
    (source, shape), (destination, _) = args[0], results[0]
    ctypes.memmove(destination, source, 4 * int(np.prod(shape)))


def _ffi_copy(x: jax.Array) -> jax.Array:
    signature = ffi.Signature.uniform(args=1, results=1, rank=1, dtype=ffi.DTYPES["float32"])
    name = ffi.register("resnet_jax_benchmark_copy", _copy, signature)
    return jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(x.shape, x.dtype))(x)


def _callback_copy(x: jax.Array) -> jax.Array:
    def copy(context, out, x):
        del context
        source = np.asarray(x)
        ctypes.memmove(np.asarray(out).ctypes.data, source.ctypes.data, source.nbytes)

    return buffer_callback(copy, jax.ShapeDtypeStruct(x.shape, x.dtype))(x)


def _program(call):
    def program(x):
        for _ in range(FLAGS.calls):
            x = call(x) + 1.0
        return x

    return jax.jit(program)


def main(argv):
    del argv
    x = jnp.zeros((FLAGS.megabytes * 2**20 // 4,), jnp.float32)
    programs = {"ffi_handler": _program(_ffi_copy), "buffer_callback": _program(_callback_copy)}
    for name, program in programs.items():  # compile, warm up, and check both compute the same
        np.testing.assert_array_equal(np.asarray(program(x))[:4], np.full(4, FLAGS.calls, np.float32), name)
    times = {name: [] for name in programs}
    for _ in range(FLAGS.rounds):
        for name, program in programs.items():
            start = time.perf_counter()
            program(x).block_until_ready()
            times[name].append(1000 * (time.perf_counter() - start))
    for name, ms in times.items():
        print(json.dumps({"mechanism": name, "calls": FLAGS.calls, "megabytes": FLAGS.megabytes,
                          "median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2)}))  # fmt: skip
    ratio = statistics.median(times["buffer_callback"]) / statistics.median(times["ffi_handler"])
    print(json.dumps({"buffer_callback_over_ffi_handler": round(ratio, 3), "jax": jax.__version__,
                      "machine": describe()}))  # fmt: skip


if __name__ == "__main__":
    app.run(main)
