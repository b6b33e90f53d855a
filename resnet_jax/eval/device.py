"""The device-resident evaluator: a CIFAR split held in device memory, evaluated in one dispatch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from resnet_jax.core.sharding import check_divisible, replicated
from resnet_jax.data import on_device
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.eval.results import EvalResult, results_from_counts
from resnet_jax.eval.scores import error_counts
from resnet_jax.recipe.members import Members


class DeviceEvaluator:
    """One protocol ('single') on one split of a dataset held on the devices (`on_device.EvalData`), built once.

    Calling it with the members' variables (leading member axis) returns one `EvalResult` per member. The split is
    read once, when the evaluator is built; each call is one dispatch, compiled on the first.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: PreparedDataset,
        data_config: Any,
        *,
        protocol: str,
        split: str,
        batch_size: int,
        mesh: Mesh,
        members: Members,
    ):
        dataset.facts.check_protocol(protocol)
        check_divisible(batch_size, mesh, "the evaluation batch size (config.eval.batch_size)")
        self.protocol, self.split, self.batch_size = protocol, split, batch_size
        self._data = on_device.EvalData.load(dataset, data_config, split, batch_size, mesh)
        step = members.over(
            lambda variables, batch: error_counts(model, protocol, variables, batch, devices=mesh.size), (0, None)
        )

        def evaluate_split(variables, arrays):
            def body(totals, i):
                batch = on_device.shard_batch(on_device.single_view_batch(arrays, i), mesh)
                return jax.tree.map(jnp.add, totals, step(variables, batch)), None

            zeros = jax.tree.map(
                jnp.zeros_like, jax.eval_shape(step, variables, on_device.single_view_batch(arrays, 0))
            )
            return jax.lax.scan(body, zeros, jnp.arange(arrays["labels"].shape[0]))[0]

        self._evaluate_split = jax.jit(evaluate_split, out_shardings=replicated(mesh))

    def __call__(self, variables: Any, stop: Callable[[], bool] = lambda: False) -> list[EvalResult]:
        del stop  # one dispatch of seconds: nothing to stop between
        return results_from_counts(self.protocol, self.split, self._evaluate_split(variables, self._data.arrays))
