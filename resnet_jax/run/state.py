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
