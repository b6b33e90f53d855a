"""The state of a run's members: what the training step changes and a checkpoint holds.

Every leaf carries a leading member axis (`resnet_jax.recipe.members`), of size 1 for a single run.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from resnet_jax import pretrained
from resnet_jax.core.sharding import replicated
from resnet_jax.recipe.members import Members


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, each leaf with a leading member axis."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState

    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    members: Members,
    mesh: Mesh,
) -> TrainState:
    """Initialises every member's parameters (He init) and optimiser state directly as replicated arrays on the mesh.

    Member k is initialised from its seed exactly as a single run of that seed is.
    """

    def init(seed) -> TrainState:
        variables = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32))
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables["batch_stats"],
            opt_state=optimizer.init(params),
        )

    return jax.jit(members.over(init, (0,)), out_shardings=replicated(mesh))(members.seeds)


def member(tree: Any, k: int = 0) -> Any:
    """Member k's part of a tree with the member axis (a `TrainState`, its variables): a plain run's."""
    return jax.tree.map(lambda x: x[k], tree)


def start_from_weights(state: TrainState, weights: str, num_classes: int, members: Members, mesh: Mesh) -> TrainState:
    """`state` with every member's parameters and BN statistics from published weights 'MODEL:TAG'
    (`resnet_jax.pretrained`); a head of another width than theirs is initialised from each member's seed, so that
    member k starts as a single run of seed k does. The optimiser state stays as initialised (zero momentum)."""
    entry = pretrained.parse(weights)
    _, variables, _ = pretrained.load(entry.model, entry.tag)
    trained = pretrained.head_width(variables)
    per_member = [
        variables if num_classes == trained else pretrained.with_new_head(variables, num_classes, int(seed))
        for seed in members.seeds
    ]
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, jnp.float32) for x in xs]), *per_member)

    def same_shape(old: jax.Array, new: jax.Array) -> jax.Array:
        if old.shape != new.shape:
            raise ValueError(f"{weights} has a tensor of shape {new.shape[1:]} where the model has {old.shape[1:]}.")
        return new

    params = jax.tree.map(same_shape, state.params, stacked["params"])
    batch_stats = jax.tree.map(same_shape, state.batch_stats, stacked["batch_stats"])
    return jax.device_put(state.replace(params=params, batch_stats=batch_stats), replicated(mesh))
