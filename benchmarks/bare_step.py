"""The bare train step: the figure every loop benchmark divides by."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.core.sharding import make_mesh
from resnet_jax.recipe.members import Members
from resnet_jax.run.state import create_train_state, member
from resnet_jax.train.step import make_train_step


def time_train_step(model, optimizer, shape, num_classes: int, batch_size: int, steps: int) -> tuple[float, float]:
    """(seconds per step, compile seconds) of one jitted SGD step on a synthetic batch already on the devices.

    The bare step: no input pipeline, no host round trip between steps. Other benchmarks divide by it.
    """
    mesh = make_mesh()
    state = member(create_train_state(model, optimizer, shape, Members(), mesh))
    step = make_train_step(model, optimizer, mesh)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(batch_size, *shape)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32),
    }
    lr = jnp.float32(0.1)
    start = time.perf_counter()
    compiled = step.lower(state, batch, lr).compile()
    compile_sec = time.perf_counter() - start
    state, metrics = compiled(state, batch, lr)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, lr)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps, compile_sec
