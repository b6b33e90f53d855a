"""The streamed evaluator: one pass of a grain pipeline over a split, for every protocol and dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from resnet_jax.core.progress import Progress
from resnet_jax.core.sharding import batch_sharded, check_divisible, replicated
from resnet_jax.data import pipeline
from resnet_jax.data.feeds import put_on_mesh
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.data.resilient import Lockstep
from resnet_jax.eval.results import EvalResult, results_from_counts
from resnet_jax.eval.scores import error_counts
from resnet_jax.recipe.members import Members


class StreamedEvaluator:
    """One protocol on one split, its batches from grain (`pipeline.eval_iterator`), built once.

    Calling it with the members' variables (leading member axis) returns one `EvalResult` per member. Each call reads
    the split anew; nothing is compiled after the first call (at most one shape per canvas bucket). A pass logs its
    progress every 10 s, and `stop()` (a preemption, Ctrl-C), if given, ends it between batches with `RunStopped`.
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
        self._dataset, self._data_config, self._batch_size, self._mesh = dataset, data_config, batch_size, mesh
        step = members.over(
            lambda variables, batch: error_counts(model, protocol, variables, batch, devices=mesh.size), (0, None)
        )
        self._step = jax.jit(step, in_shardings=(replicated(mesh), batch_sharded(mesh)), out_shardings=replicated(mesh))
        self._steps = pipeline.eval_steps(dataset, split, protocol, batch_size)  # global batches per pass

    def __call__(self, variables: Any, stop: Callable[[], bool] = lambda: False) -> list[EvalResult]:
        return results_from_counts(self.protocol, self.split, self._stream(variables, stop))

    def _stream(self, variables: Any, stop: Callable[[], bool]) -> dict[str, jax.Array]:
        """Sums the counts over one pass of the grain pipeline. A process whose pipeline fails for good goes on with
        masked-out batches to the end of the pass, so that no process waits alone; then all stop together."""
        iterator = pipeline.eval_iterator(
            self._dataset,
            self._data_config,
            split=self.split,
            protocol=self.protocol,
            global_batch_size=self._batch_size,
        )
        batches = Lockstep(iterator, blank=lambda last: {**last, "mask": np.zeros_like(last["mask"])})
        totals = None
        progress = Progress(
            f"Evaluation ({self.protocol}, {self.split})",
            self._steps * self._batch_size,
            stop=stop,
            stopped="The checkpoints are intact; rerun the same command to evaluate.",
            sync=lambda: jax.block_until_ready(totals),
        )
        try:
            for i in range(self._steps):
                counts = self._step(variables, put_on_mesh(next(batches), self._mesh))
                totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
                progress.step((i + 1) * self._batch_size)
        finally:
            batches.close()  # stops grain's worker processes
        batches.stop_together(f"{self.split} (evaluation)")
        return totals
