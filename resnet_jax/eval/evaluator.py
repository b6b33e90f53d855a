"""The evaluator a run's config asks for: on the devices (`data.on_device`) or streamed from grain."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from jax.sharding import Mesh

from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.eval.device import DeviceEvaluator
from resnet_jax.eval.streamed import StreamedEvaluator
from resnet_jax.recipe.members import Members

Evaluator = DeviceEvaluator | StreamedEvaluator


def make_evaluator(
    config: Any,
    model: nn.Module,
    dataset: PreparedDataset,
    mesh: Mesh,
    members: Members,
    *,
    protocol: str | None = None,
    split: str | None = None,
    batch_size: int | None = None,
) -> Evaluator:
    """The evaluator of a run's config: its periodic protocol, split and batch size unless others are given."""
    kind = DeviceEvaluator if config.data.on_device else StreamedEvaluator
    return kind(
        model,
        dataset,
        config.data,
        protocol=protocol or config.eval.protocol,
        split=split or config.eval.split,
        batch_size=batch_size or config.eval.batch_size,
        mesh=mesh,
        members=members,
    )
