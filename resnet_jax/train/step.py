"""The data-parallel train step: one `jax.jit` over a 1-D device mesh, one or many steps and members per dispatch.

Parameters, BN statistics and optimiser state are replicated; the global batch is sharded along its first axis over
the mesh's data axis, and XLA inserts the gradient all-reduce. BatchNorm statistics follow the model's
`bn_group_size`, so they do not depend on how many devices share the batch.

`make_train_step` is one SGD step of one run on a batch fed from the host. `make_dispatch` is what the training loop
calls: k steps in one `lax.scan`, their batches made by a feed inside the computation (`resnet_jax.data.feeds`), for
every member of the run (`resnet_jax.recipe.members`: independent runs sharing one program, each with its own
parameters, BN statistics, data order and augmentation). Metrics are summed on the device over the k steps, so the
host waits for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from resnet_jax.core.sharding import batch_sharded, replicated
from resnet_jax.kernels.conv import scans_well
from resnet_jax.recipe.config import LOOPS
from resnet_jax.recipe.members import Members
from resnet_jax.run.state import TrainState


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def sgd_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    batch: dict,
    learning_rate: jax.Array,
    loss_scale: float = 1.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of the paper's SGD on one batch; metrics are sums over the batch (loss, top-1 errors, examples).

    `loss_scale` multiplies the loss before the backward pass and divides the gradients after it: static loss scaling,
    which keeps float16 gradients from underflowing (mmpretrain's fp16 recipe uses 512; 1 changes nothing).
    """

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
        )
        loss = cross_entropy(logits, batch["label"])
        return jnp.mean(loss) * loss_scale, (loss, logits, updates["batch_stats"])

    grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    if loss_scale != 1.0:
        grads = jax.tree.map(lambda g: g / loss_scale, grads)
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = learning_rate
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": jnp.sum(loss),
        "errors": jnp.sum(jnp.argmax(logits, -1) != batch["label"]),
        "examples": jnp.asarray(loss.shape[0], jnp.int32),
    }
    return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), metrics


def make_train_step(
    model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh, loss_scale: float = 1.0
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """`step(state, batch, learning_rate) -> (state, metrics)` for one run (a state without the member axis) and one
    batch fed from the host; `state` is donated."""
    return jax.jit(
        lambda state, batch, lr: sgd_step(model, optimizer, state, batch, lr, loss_scale),
        in_shardings=(replicated(mesh), batch_sharded(mesh), replicated(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )


def make_dispatch(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    feed: Any,
    steps: int,
    members: Members,
    loss_scale: float = 1.0,
    loop: str = "auto",
) -> Callable[..., tuple[TrainState, dict]]:
    """`dispatch(state, data, inputs, seeds, learning_rates) -> (state, metric sums)`: `steps` SGD steps of every
    member in one call.

    `learning_rates` is float32 [members, steps], set by the host-side schedules; `seeds` is int32 [members]. `feed`
    makes each step's batch inside the computation from `data` and `inputs` (`resnet_jax.data.feeds.Feed`). The
    metric sums cover the `steps` steps, per member. `state` (with the member axis) is donated.

    `loop` 'scan' runs the steps in one `lax.scan`, 'host' as `steps` calls of one jitted step; 'auto' (`LOOPS`) scans
    unless the model's convolutions are XLA's own on the CPU backend (`resnet_jax.kernels.conv.scans_well`), whose
    gradients run 7-50x slower inside a loop body than outside one (benchmarks/RESULTS.md). Both compute the same
    steps on the same batches.
    """

    def one_step(state: TrainState, data: Any, inputs: Any, seed: jax.Array, learning_rate: jax.Array, i: jax.Array):
        return sgd_step(model, optimizer, state, feed.batch(data, inputs, seed, i), learning_rate, loss_scale)

    def scanned(state: TrainState, data: Any, inputs: Any, seed: jax.Array, learning_rates: jax.Array):
        def body(carry, i):
            state, sums = carry
            state, metrics = one_step(state, data, inputs, seed, learning_rates[i], i)
            return (state, jax.tree.map(jnp.add, sums, metrics)), None

        zeros = {
            "loss": jnp.zeros((), jnp.float32),
            "errors": jnp.zeros((), jnp.int32),
            "examples": jnp.zeros((), jnp.int32),
        }
        (state, sums), _ = jax.lax.scan(body, (state, zeros), jnp.arange(steps))
        return state, sums

    def per_member(f, *extra_axes):
        return members.over(f, (0, None, feed.inputs_member_axes, 0, 0, *extra_axes))

    shardings = {"out_shardings": (replicated(mesh), replicated(mesh)), "donate_argnums": (0,)}
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, not {loop!r}.")
    if loop == "scan" or (loop == "auto" and steps > 1 and scans_well(model.conv_impl, model.dtype)):
        return jax.jit(per_member(scanned), **shardings)

    step = jax.jit(per_member(one_step, None), **shardings)

    def host_loop(state: TrainState, data: Any, inputs: Any, seeds: Any, learning_rates: np.ndarray):
        sums = None
        for i in range(steps):
            state, metrics = step(state, data, inputs, seeds, learning_rates[..., i], np.int32(i))
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        return state, sums

    return host_loop
