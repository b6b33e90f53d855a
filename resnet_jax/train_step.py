"""The data-parallel train step: one `jax.jit` over a 1-D device mesh.

Parameters, BN statistics and optimiser state are replicated; the global batch is sharded along its first axis
over the mesh's "data" axis, and XLA inserts the gradient all-reduce. BatchNorm statistics follow the model's
`bn_group_size`, so they do not depend on how many devices share the batch.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from resnet_jax.sharding import batch_sharded, replicated


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState

    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation, image_shape: tuple[int, ...],
                       seed: int, mesh: Mesh) -> TrainState:
    """Initialises parameters (He init) and optimiser state directly as replicated arrays on the mesh."""

    def init() -> TrainState:
        variables = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32))
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                          opt_state=optimizer.init(params))

    return jax.jit(init, out_shardings=replicated(mesh))()


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """Returns `step(state, batch, learning_rate) -> (state, metrics)`; `state` is donated.

    `metrics` holds sums over the batch (loss, top-1 errors, examples), to be accumulated on the device and fetched
    every few steps, so the loop never waits for the device.
    """

    def step(state: TrainState, batch: dict, learning_rate: jax.Array) -> tuple[TrainState, dict]:
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                          train=True, mutable=["batch_stats"])
            loss = cross_entropy(logits, batch["label"])
            return jnp.mean(loss), (loss, logits, updates["batch_stats"])

        grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
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

    return jax.jit(step, in_shardings=(replicated(mesh), batch_sharded(mesh), replicated(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=(0,))
