"""Small nets for tests that run a protocol at full image sizes on a CPU."""

import jax
import jax.numpy as jnp

from resnet_jax.models import BasicBlock, ResNet


def tiny_resnet(**fields):
    """An ImageNet-stem ResNet small enough to run at the multi-scale protocol's sizes on a CPU."""
    fields = {
        "stage_sizes": (1, 1, 1, 1),
        "block_cls": BasicBlock,
        "num_classes": 5,
        "widths": (8, 8, 16, 16),
        **fields,
    }
    return ResNet(**fields)


def noisy_batch_stats(variables, seed=1):
    """BN statistics far from the identity, so that a canvas's border would show in every layer."""
    keys = iter(jax.random.split(jax.random.key(seed), 1000))

    def perturb(path, x):
        noise = jax.random.normal(next(keys), x.shape)
        return jnp.abs(x + noise) + 0.5 if path[-1].key == "var" else x + 0.5 * noise

    return {**variables, "batch_stats": jax.tree_util.tree_map_with_path(perturb, variables["batch_stats"])}
