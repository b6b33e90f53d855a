"""Decisions that every process of a multi-host run must take together.

A process that decided alone (to retry, to fall back to an older checkpoint, to stop) would leave the others waiting
in a collective forever. These helpers share one small value between all processes; with one process they cost
nothing.
"""

from __future__ import annotations

import jax
import numpy as np


def is_main() -> bool:
    """Whether this is process 0, the one that writes the run's files."""
    return jax.process_index() == 0


def first_failing_process(failed: bool) -> int | None:
    """The lowest index of a process where `failed` is True, the same on every process; None if none failed."""
    if jax.process_count() == 1:
        return 0 if failed else None
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.int32(failed))).reshape(-1)
    failing = np.flatnonzero(flags)
    return int(failing[0]) if failing.size else None


def sync(name: str) -> None:
    """Waits until every process reaches the point called `name`."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
