"""BN population statistics recomputed after training as a plain average, as the authors' released models were."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax.core.progress import Progress
from resnet_jax.core.sharding import replicated
from resnet_jax.data.feeds import make_feed
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.recipe.config import model_from_config
from resnet_jax.recipe.members import Members
from resnet_jax.run.state import TrainState


def recompute_batch_stats(
    config: ml_collections.ConfigDict,
    dataset: PreparedDataset,
    state: TrainState,
    members: Members,
    mesh: Any,
    stop: Callable[[], bool] = lambda: False,
) -> Any:
    """Every member's BN statistics as a plain average over `bn_recompute_examples` training images (the authors'
    release), each batch's statistics taken over the whole batch rather than per group, from the training stream of
    the member's seed + 1. A long phase (ImageNet: 51,200 images, one batch per dispatch): it logs its progress every
    10 s, and `stop()` (a preemption, Ctrl-C) ends it between dispatches with `RunStopped`; nothing saved changes."""
    model = model_from_config(
        ml_collections.ConfigDict({**config.model.to_dict(), "bn_group_size": None, "bn_momentum": 0.0})
    )
    batches = -(-config.bn_recompute_examples // config.batch_size)
    # On the devices all batches go in one dispatch if they span at most one epoch boundary; from grain, one by one.
    fits = config.data.on_device and batches * config.batch_size <= dataset.num_examples("train")
    per_dispatch = batches if fits else 1
    seeds = members.seeds + 1
    feed = make_feed(dataset, config.data, mesh, batch_size=config.batch_size, steps=per_dispatch, seeds=seeds)

    def one_member(variables, feed_data, inputs, seed):
        def body(total, i):
            images = feed.batch(feed_data, inputs, seed, i)["image"]
            stats = model.apply(variables, images, train=True, mutable=["batch_stats"])[1]["batch_stats"]
            return jax.tree.map(jnp.add, total, stats), None

        zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
        return jax.lax.scan(body, zeros, jnp.arange(per_dispatch))[0]  # forward passes only: no XLA:CPU slowdown

    run = jax.jit(members.over(one_member, (0, None, feed.inputs_member_axes, 0)), out_shardings=replicated(mesh))
    total, dispatches = None, batches // per_dispatch
    images = batches * config.batch_size
    logging.info("BN statistics: recomputing them over %d training images.", images)
    progress = Progress(
        "BN statistics",
        images,
        stop=stop,
        stopped="The checkpoints are intact; rerun the same command to recompute them and evaluate.",
        sync=lambda: jax.block_until_ready(total),
    )
    try:
        progress.check()
        for dispatch in range(dispatches):
            sums = run(state.variables(), feed.data, feed.inputs(dispatch * per_dispatch), np.asarray(seeds))
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
            progress.step((dispatch + 1) * per_dispatch * config.batch_size)
    finally:
        feed.close()
    return jax.tree.map(lambda x: x / batches, total)
