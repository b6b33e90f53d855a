"""Loading a run back from its directory: its config, model and the state of a checkpoint."""

from __future__ import annotations

import os
from typing import Any

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
    `resnet_jax.run.state.member(state.variables(), k)` gives member k's variables.
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
    return config, model, restored.state
