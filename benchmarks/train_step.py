"""Throughput of the full train step (forward, backward, SGD update, BN statistics) on synthetic batches.

    python -m benchmarks.train_step --model=resnet50 --batch_size=32 --dtype=float32 --steps=10

Prints one JSON line per figure; the last line holds images_per_sec, compile_sec, mfu (model multiply-adds x 2 x 3
for forward and backward, per second, over the peak FLOP/s that a large jitted matrix product reaches in the same run)
and the peak memory.
"""

import json
import resource
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks.bare_step import time_train_step
from resnet_jax.core.machine import describe
from resnet_jax.models import MODEL_NAMES, create_model, spec
from resnet_jax.models.flops import count_multiply_adds
from resnet_jax.recipe.optim import make_optimizer

flags.DEFINE_enum("model", "resnet50", MODEL_NAMES, "Model name.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_integer("steps", 10, "Timed steps (after one compile-and-warm-up step).")
flags.DEFINE_bool("v15", False, "Stride on the 3x3 of bottlenecks (v1.5), as flax's and torchvision's ResNet-50.")
flags.DEFINE_integer("bn_group_size", None, "BN group size (default: whole batch).")
FLAGS = flags.FLAGS


def matmul_peak_flops(dtype: str, n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n matrix product: the practical ceiling for convolution-heavy work here."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_memory_bytes() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # host process (CPU backend)


def main(argv):
    del argv
    name = FLAGS.model
    shape, num_classes = spec(name).input_shape, spec(name).num_classes
    options = {"dtype": FLAGS.dtype, "bn_group_size": FLAGS.bn_group_size}
    if FLAGS.v15:
        options["stride_on_3x3"] = True
    model = create_model(name, num_classes=num_classes, **options)
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4)
    seconds, compile_sec = time_train_step(model, optimizer, shape, num_classes, FLAGS.batch_size, FLAGS.steps)

    macs = count_multiply_adds(model, shape)
    peak = matmul_peak_flops(FLAGS.dtype)
    achieved = 6 * macs * FLAGS.batch_size / seconds  # 2 FLOPs per multiply-add, x3 for forward + backward
    result = {
        "name": f"train_step/{name}{'_v1.5' if FLAGS.v15 else ''}/{FLAGS.dtype}/batch{FLAGS.batch_size}",
        "images_per_sec": FLAGS.batch_size / seconds,
        "step_sec": seconds,
        "compile_sec": compile_sec,
        "model_gflops_per_sec": achieved / 1e9,
        "matmul_peak_gflops_per_sec": peak / 1e9,
        "mfu": achieved / peak,
        "peak_memory_bytes": peak_memory_bytes(),
        **describe(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
