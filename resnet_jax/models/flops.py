"""What a network costs: its parameters, and its multiply-adds counted the way Table 1 counts them (convolutions and
the fully-connected layer). Both from an abstract (shape-only) evaluation: nothing is computed."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def count_parameters(model: nn.Module, input_shape: Sequence[int]) -> int:
    """The number of parameters (BN statistics excluded) of `model` built for examples of shape `input_shape`."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32)))
    return int(sum(x.size for x in jax.tree.leaves(shapes["params"])))


def count_multiply_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of one example of shape `input_shape` (H, W, C).

    Every `nn.Conv` and `nn.Dense` call is intercepted during an abstract (shape-only) evaluation, so nothing is
    computed and the count follows whatever the model really builds (strides, v1/v1.5, shortcuts).
    """
    total = 0

    def interceptor(next_fun, args, kwargs, context):
        nonlocal total
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
            kernel = module.variables["params"]["kernel"]
            # Each output element costs one multiply-add per kernel entry that feeds it.
            macs_per_output = int(np.prod(kernel.shape[:-1]))
            if isinstance(module, nn.Conv):
                macs_per_output //= module.feature_group_count
            total += int(np.prod(out.shape[1:])) * macs_per_output
        return out

    def forward():
        with nn.intercept_methods(interceptor):
            return model.init(jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32))

    jax.eval_shape(forward)
    return total
