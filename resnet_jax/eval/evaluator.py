"""The evaluator a run's config asks for: on the devices (`data.on_device`) or streamed from grain."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from absl import logging
from jax.sharding import Mesh

from resnet_jax.core.sharding import fitted_batch
from resnet_jax.data.pipeline import eval_batch_that_fits
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
    return evaluator_for(
        config.data,
        model,
        dataset,
        mesh,
        members,
        protocol=protocol or config.eval.protocol,
        split=split or config.eval.split,
        batch_size=batch_size or config.eval.batch_size,
    )


def evaluator_for(
    data_config: Any,
    model: nn.Module,
    dataset: PreparedDataset,
    mesh: Mesh,
    members: Members,
    *,
    protocol: str,
    split: str,
    batch_size: int,
) -> Evaluator:
    """The evaluator of `protocol` on `split` with the input `data_config` gives: on the devices when it keeps the
    dataset there (`data.on_device`), streamed from grain otherwise. A batch that does not split across the devices
    is rounded up to the next multiple of their count (the padding is masked: every example counts once), and a
    streamed batch whose copies in flight would not fit in host memory is made smaller
    (`pipeline.eval_batch_that_fits`); its `batch_size` is the batch used."""
    fitted = fitted_batch(batch_size, mesh.size)
    if fitted != batch_size:
        logging.info(
            "Evaluation batch %d rounded up to %d, a multiple of the %d devices (padding masked).",
            batch_size,
            fitted,
            mesh.size,
        )
    if not data_config.on_device:  # batches streamed through host memory: as many as fit
        fitted = eval_batch_that_fits(dataset, data_config, protocol, fitted, mesh.size)
    kind = DeviceEvaluator if data_config.on_device else StreamedEvaluator
    return kind(
        model,
        dataset,
        data_config,
        protocol=protocol,
        split=split,
        batch_size=fitted,
        mesh=mesh,
        members=members,
    )
