"""Why CPU dispatches run step by step and CPU multi-runs member by member: two XLA:CPU measurements.

    python -m benchmarks.cpu_loop_gradients

1. A 3x3 convolution's kernel and input gradients (batch 128 of 32x32x16, CIFAR's first stage) and the ResNet-20
   train step, each jitted alone and jitted as the body of a one-iteration `lax.scan`. XLA:CPU runs the scanned ones
   many times slower, which is why `train_step.make_dispatch` runs its k steps as k calls there.
2. The ResNet-20 train step of three members in one jitted program, `vmap`ped (grouped convolutions) against unrolled
   (one member after another), beside one member alone: why `config.multi_run='auto'` unrolls on the CPU.
Prints one JSON line per figure (on whatever backend JAX uses).
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app

from resnet_jax.core.machine import describe
from resnet_jax.core.sharding import make_mesh
from resnet_jax.models import create_model
from resnet_jax.recipe.members import Members
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.state import create_train_state, member
from resnet_jax.train.step import sgd_step


def _seconds(function, *args, repeats: int = 3) -> float:
    jax.block_until_ready(function(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _alone_and_scanned(function):
    def scanned(*args):
        init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(function, *args))
        return jax.lax.scan(lambda carry, _: (function(*args), None), init, jnp.arange(1))[0]

    return jax.jit(function), jax.jit(scanned)


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(128, 32, 32, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 16, 16)) * 0.1, jnp.float32)

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y * y)

    model = create_model("resnet20", num_classes=10, bn_group_size=64)
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4)
    state = member(create_train_state(model, optimizer, (32, 32, 3), Members(), make_mesh()))
    batch = {"image": jnp.asarray(rng.normal(size=(128, 32, 32, 3)), jnp.float32), "label": jnp.zeros(128, jnp.int32)}
    cases = {
        "conv_kernel_gradient": (jax.grad(loss), (w, x)),
        "conv_input_gradient": (jax.grad(loss, argnums=1), (w, x)),
        "resnet20_train_step": (lambda s, b: sgd_step(model, optimizer, s, b, 0.1)[0].params, (state, batch)),
    }
    machine = describe()
    for name, (function, args) in cases.items():
        alone, scanned = _alone_and_scanned(function)
        seconds_alone, seconds_scanned = _seconds(alone, *args), _seconds(scanned, *args)
        print(
            json.dumps(
                {
                    "name": f"loop_gradients/{name}",
                    "alone_sec": seconds_alone,
                    "in_scan_sec": seconds_scanned,
                    "slowdown": seconds_scanned / seconds_alone,
                    **machine,
                }
            ),
            flush=True,
        )

    step = cases["resnet20_train_step"][0]
    one = _seconds(jax.jit(step), state, batch)
    for mode in ("vmap", "unrolled"):
        members = Members(count=3, mode=mode)
        stacked = create_train_state(model, optimizer, (32, 32, 3), members, make_mesh())
        seconds = _seconds(jax.jit(members.over(step, (0, None))), stacked, batch)
        print(
            json.dumps(
                {
                    "name": f"multi_run/resnet20/3_members/{mode}",
                    "sec": seconds,
                    "one_member_sec": one,
                    "vs_three_single_steps": seconds / (3 * one),
                    **machine,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
