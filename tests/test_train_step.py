"""Several runs in one program: batched (vmap) or one after the other (unrolled), each member is its own run."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.core.sharding import make_mesh
from resnet_jax.models import create_model
from resnet_jax.recipe.members import Members
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.state import create_train_state
from resnet_jax.train.step import sgd_step


@pytest.mark.parametrize("mode", ["vmap", "unrolled"])
def test_each_member_of_a_multi_run_steps_as_the_run_of_its_seed(mode):
    model = create_model("resnet20", num_classes=10, bn_group_size=4)
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    batches = {
        "image": jnp.asarray(rng.normal(size=(3, 8, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, (3, 8)), jnp.int32),
    }  # a batch per member
    learning_rates = jnp.array([0.1, 0.05, 0.01])

    def step(state, batch, learning_rate):
        return sgd_step(model, optimizer, state, batch, learning_rate)

    members = Members(first_seed=4, count=3, mode=mode)
    state = create_train_state(model, optimizer, (32, 32, 3), members, make_mesh())
    stepped, metrics = jax.jit(members.over(step, (0, 0, 0)))(state, batches, learning_rates)
    single = jax.jit(step)
    for k in range(3):
        alone = _member(create_train_state(model, optimizer, (32, 32, 3), Members(4 + k), make_mesh()), 0)
        chex.assert_trees_all_equal(_member(state.params, k), alone.params)  # the same initialisation
        alone, alone_metrics = single(alone, _member(batches, k), learning_rates[k])
        # float32 summation order: the first BN bias gradient sums 8192 terms that nearly cancel
        chex.assert_trees_all_close(_member(stepped.params, k), alone.params, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(metrics["loss"][k], alone_metrics["loss"], rtol=1e-5)


def _member(tree, k):
    return jax.tree.map(lambda x: x[k], tree)
