"""How arrays are laid across devices: a 1-D "data" mesh over every device of every process.

Model state is replicated; batches are split along their first axis (`resnet_jax.data.put_on_mesh` assembles them
from each process's part). The axis name lives here alone.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.core.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: Any = None) -> Mesh:
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def fitted_batch(global_batch_size: int, devices: int) -> int:
    """The smallest multiple of `devices` at or above `global_batch_size`: an evaluation batch that splits across
    them (the evaluators mask the padding, so every example still counts once)."""
    return -(-global_batch_size // devices) * devices


def check_divisible(global_batch_size: int, mesh: Mesh, what: str) -> None:
    if global_batch_size % mesh.size:
        raise ConfigError(
            f"{what}={global_batch_size} does not divide across the {mesh.size} devices; use a multiple of {mesh.size}."
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host arrays that are the same on every process, as arrays replicated on every device of the mesh (each
    process's local data is then the whole global array)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(replicated(mesh), np.asarray(x)), tree)
