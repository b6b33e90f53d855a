"""Published weights (`resnet_jax.pretrained`) evaluated as a run's checkpoint is: any prepared split, any protocol.

The images are normalised as the weights were trained (the entry's per-channel mean and std), not as the paper's
runs are, and the '1crop' view resizes to the publisher's shorter side (`Weights.one_crop_side`: torchvision's V2
weights were measured at 232, the rest at the paper's 256); the result is reported beside the publisher's own
figure and how it was measured.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from resnet_jax import pretrained
from resnet_jax.core.errors import ConfigError
from resnet_jax.data import datasets
from resnet_jax.data.options import default_data_config
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.eval.evaluator import evaluator_for
from resnet_jax.eval.results import summarize
from resnet_jax.recipe.members import Members


def data_config_of(entry: pretrained.Weights, data_dir: str | None = None) -> Any:
    """The data config of the weights' dataset with their input normalisation."""
    config = default_data_config(entry.dataset)
    config.normalization = "per_channel"
    config.channel_mean, config.channel_std = entry.mean, entry.std
    if entry.one_crop_side is not None:
        config.one_crop_side = entry.one_crop_side
    config.data_dir = data_dir
    return config


def evaluate_weights(
    name: str,
    mesh: Mesh,
    *,
    data_dir: str | None = None,
    protocol: str | None = None,
    split: str | None = None,
    batch_size: int = 256,
    cache_dir: str | None = None,
) -> tuple[dict[str, Any], pretrained.Weights]:
    """(summary, entry) of weights 'MODEL:TAG' on `split` (default: the dataset's test split) under `protocol`
    (default: the one nearest the publisher's evaluation)."""
    entry = pretrained.parse(name)
    facts = datasets.get(entry.dataset)
    protocol = protocol or entry.protocol
    facts.check_protocol(protocol)
    split = split or facts.test_split
    if split not in facts.split_names(False):
        raise ConfigError(f"--split={split}: {facts.name} has the splits {', '.join(facts.split_names(False))}.")
    data_config = data_config_of(entry, data_dir)
    dataset = PreparedDataset.open(data_config)  # before the download: a missing dataset says so first
    model, variables, _ = pretrained.load(entry.model, entry.tag, cache_dir)
    one = Members()  # the evaluators take every variable with a leading axis of runs
    evaluator = evaluator_for(
        data_config,
        model,
        dataset,
        mesh,
        one,
        protocol=protocol,
        split=split,
        batch_size=batch_size,
    )
    return summarize(evaluator(jax.tree.map(lambda x: np.asarray(x)[None], variables))), entry


def published_figure(entry: pretrained.Weights) -> str:
    """The publisher's accuracy and how it was measured, in one phrase."""
    top5 = f", top-5 {entry.top5:.2f}%" if entry.top5 is not None else ""
    return f"published: top-1 accuracy {entry.top1:.2f}%{top5} ({entry.evaluation}; {entry.source})"
