"""Loading a run back from its directory: its config, model and the state of a checkpoint."""

from __future__ import annotations

import os
from typing import Any

import jax
from absl import logging

from resnet_jax import models
from resnet_jax.core.errors import WorkdirError
from resnet_jax.core.sharding import make_mesh
from resnet_jax.recipe.config import model_from_config
from resnet_jax.recipe.members import Members
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.checkpoints import Checkpointer, model_signature
from resnet_jax.run.rundir import RunDir, as_run_dir
from resnet_jax.run.state import TrainState, create_train_state


def load_run(workdir: str | os.PathLike | RunDir, step: int | None = None, mesh: Any = None):
    """(config, model, state) of a run's checkpoint at `step` (default: the latest that restores), on all devices.

    The state has the members' leading axis (`resnet_jax.recipe.members`), of size 1 for a single run;
    `resnet_jax.run.state.member(state.variables(), k)` gives member k's variables. Its BN statistics are those the
    run evaluated with: for `bn_statistics='recomputed'` the ones recomputed after training where they were stored
    for this step (the run finished), the checkpoint's moving averages otherwise (one warning line says so).
    """
    run_dir = as_run_dir(workdir)
    config = run_dir.read_config()
    mesh = mesh or make_mesh()
    members = Members.from_config(config)
    model = model_from_config(config.model)
    template: TrainState = create_train_state(
        model, make_optimizer(**config.optimizer), models.spec(config.model.name).input_shape, members, mesh
    )
    signature = model_signature(config.model, members, template.params)
    with Checkpointer(run_dir, members, signature, read_only=True) as checkpointer:
        restored = checkpointer.restore(template, step)
    if restored is None:
        raise WorkdirError(f"{run_dir.path} holds no checkpoint (in {run_dir.checkpoints}) to load.")
    state = restored.state
    if config.bn_statistics == "recomputed":
        stored = run_dir.read_bn_statistics(restored.step)
        if stored is None:
            logging.warning(
                "%s: no BN statistics were recomputed for step %d (the run has not finished there): its moving "
                "averages are used.", run_dir.path, restored.step,
            )  # fmt: skip
        else:
            placed = jax.tree.map(lambda like, x: jax.device_put(x, like.sharding), state.batch_stats, stored)
            state = state.replace(batch_stats=placed)
    return config, model, state
