"""oneDNN's fpmath mode on this CPU: do float32 convolutions allowed to use bfloat16 change kernel, value or time?

    python -m benchmarks.onednn_fpmath [--repeats=10]

oneDNN's `fpmath_mode` lets a float32 primitive use lower-precision units (bfloat16 on AMX, the CPU's counterpart of
TF32 on GPUs). It is read at the library's load from `ONEDNN_DEFAULT_FPMATH_MODE`, so each mode runs in its own
process: ResNet-20's 3x3 convolution of CIFAR's first stage (batch 128 of 32x32x16 -> 16, stride 1) through our
oneDNN path, forward and both gradients, jitted. Each process reports the kernels oneDNN chose (`ONEDNN_VERBOSE=1`)
and the median time of `--repeats` calls; the parent compares the two modes' outputs bit for bit. One JSON line per
mode, then one with the comparison and the machine. `conv_impl` offers no fpmath option while the answer here is
"the same kernels" (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

flags.DEFINE_integer("repeats", 10, "Timed calls per mode.")
flags.DEFINE_string("_child", "", "Internal: run one mode and write its outputs to this .npz file.")
FLAGS = flags.FLAGS

MODES = ("strict", "bf16")


def _child(out: str) -> None:
    import jax
    import jax.numpy as jnp

    from resnet_jax.kernels.conv import onednn_conv_general_dilated

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(128, 32, 32, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 16, 16)) / 12, jnp.float32)
    g = jnp.asarray(rng.normal(size=(128, 32, 32, 16)), jnp.float32)

    def loss(x, w):
        y = onednn_conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y * g), y

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, y), (dx, dw) = jax.block_until_ready(step(x, w))
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(x, w))
        times.append(1000 * (time.perf_counter() - start))
    np.savez(out, y=np.asarray(y), dx=np.asarray(dx), dw=np.asarray(dw), ms=statistics.median(times))


def main(argv):
    del argv
    if FLAGS._child:
        return _child(FLAGS._child)
    from resnet_jax.core.machine import describe

    outputs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for mode in MODES:
            out = Path(scratch) / f"{mode}.npz"
            env = {**os.environ, "ONEDNN_DEFAULT_FPMATH_MODE": mode.upper(), "ONEDNN_VERBOSE": "1"}
            run = subprocess.run(
                [sys.executable, "-m", "benchmarks.onednn_fpmath", f"--_child={out}", f"--repeats={FLAGS.repeats}"],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            # verbose lines: onednn_verbose,...,exec,cpu,convolution,<implementation>,<propagation>,...,attr-fpmath:...
            kernels = sorted(set(re.findall(r",exec,cpu,convolution,([^,]+),([^,]+),", run.stdout)))
            fpmath = sorted(set(re.findall(r"attr-fpmath:(\w+)", run.stdout)))
            with np.load(out) as saved:
                outputs[mode] = {k: saved[k] for k in saved.files}
            print(json.dumps({"mode": mode, "kernels": [" ".join(k) for k in kernels], "attr_fpmath": fpmath,
                              "median_ms": round(float(outputs[mode]["ms"]), 2)}))  # fmt: skip
    identical = {k: bool(np.array_equal(outputs["strict"][k], outputs["bf16"][k])) for k in ("y", "dx", "dw")}
    print(json.dumps({"bitwise_identical": identical, "machine": describe()}))


if __name__ == "__main__":
    app.run(main)
