"""BatchNorm whose training statistics come from fixed-size groups of examples.

The paper's BN statistics are per GPU (32 ImageNet examples, 64 CIFAR examples), so the batch a statistic sees is a
hyper-parameter of the recipe. Computing the statistics over groups of `group_size` examples of the global batch
reproduces that on any number of devices; `group_size=None` uses the whole global batch, which under `jax.jit` with a
batch-sharded input is cross-device ("sync") BN. Variable names match `flax.linen.BatchNorm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.kernels.batch_norm import normalize


class GroupedBatchNorm(nn.Module):
    """BatchNorm over the last axis with statistics per group of `group_size` examples in training.

    The moving averages track the mean over groups of the group statistics. Training normalises with the biased
    variance of each group; `unbiased_running_var` feeds the moving average with the unbiased one, count / (count - 1)
    times it (count: the values of a channel in a group), as Caffe (the authors' framework) and PyTorch do; False is
    Flax's `nn.BatchNorm`. `impl` says which library computes training's normalisation
    (`resnet_jax.kernels.batch_norm`: 'auto', 'xla', 'onednn').
    """

    use_running_average: bool
    group_size: int | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    unbiased_running_var: bool = False
    dtype: Any = jnp.float32
    impl: str = "auto"
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", self.bias_init, (features,), jnp.float32)

        if self.use_running_average:
            mul = scale * jax.lax.rsqrt(running_var.value + self.epsilon)
            return (x.astype(jnp.float32) * mul + (bias - running_mean.value * mul)).astype(self.dtype)

        n = x.shape[0]
        group = self.group_size or n
        if n % group:
            raise ValueError(
                f"BatchNorm group size {group} does not divide the batch of {n} examples; choose a "
                f"batch size that is a multiple of the group size (config model.bn_group_size)."
            )
        y, mean, var = normalize(x, scale, bias, group_size=group, epsilon=self.epsilon, dtype=self.dtype,
                                 impl=self.impl)  # fmt: skip

        if not self.is_initializing():
            m = self.momentum
            count = group * math.prod(x.shape[1:-1])  # the values of one channel in one group
            if self.unbiased_running_var and count > 1:
                var = var * (count / (count - 1))
            running_mean.value = m * running_mean.value + (1 - m) * jnp.mean(mean, axis=0)
            running_var.value = m * running_var.value + (1 - m) * jnp.mean(var, axis=0)
        return y
