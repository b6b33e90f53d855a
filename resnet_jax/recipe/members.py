"""The runs one program trains together ("members"): their seeds, how they share the program, and their files.

`config.runs` = N trains the N seeds `seed .. seed + N - 1` in one program, each with its own initialisation,
parameters, BN statistics, data order and augmentation. Every array of the training state carries a leading member
axis of size N, N = 1 included, and every per-member value (schedules, results, folders) is a list of N: training,
evaluation, checkpoints and the run directory have one code path, and ask this type what differs.

What differs between one run and several is on disk only, and lives here: a single run keeps the files and the
checkpoint layout of a plain run (no `seed<s>/` folder, no member axis in its checkpoints), so runs written before
members existed, including the committed ones under `results/`, still resume and load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.core.errors import ConfigError

MODES = ("auto", "vmap", "unrolled", "map")
"""How the members share the program (`config.multi_run`): 'vmap' batches them into one computation (each
convolution becomes one grouped convolution), which fills an accelerator that one CIFAR net leaves mostly idle;
'unrolled' computes them one after the other in the same program, which XLA:CPU runs about 4x faster than its grouped
convolutions (benchmarks/RESULTS.md); 'map' computes them one after the other in a loop (`lax.map`: one copy of the
step in the program, however many members); 'auto' picks 'unrolled' on the CPU and 'vmap' elsewhere. The members'
results are the same either way, to float rounding. Which fills a GPU best is measured (benchmarks/fill.py)."""


@dataclasses.dataclass(frozen=True)
class Members:
    """The runs of seeds `first_seed .. first_seed + count - 1`, trained in one program as `mode` says."""

    first_seed: int = 0
    count: int = 1
    mode: str = "auto"

    def __post_init__(self):
        if self.count < 1:
            raise ConfigError(f"config.runs must be >= 1, not {self.count}.")
        if self.mode not in MODES:
            raise ConfigError(f"config.multi_run must be one of {MODES}, not {self.mode!r}.")

    @classmethod
    def from_config(cls, config: Any) -> Members:
        """The members of a run config (`seed`, `runs`, `multi_run`)."""
        return cls(config.seed, config.runs, config.multi_run)

    @property
    def seeds(self) -> np.ndarray:
        """int32 [count]: each member's seed, in member order."""
        return np.arange(self.first_seed, self.first_seed + self.count, dtype=np.int32)

    @property
    def single(self) -> bool:
        """Whether this is one plain run (the one question on which one run and several differ)."""
        return self.count == 1

    # --- one program for all members
    def program_mode(self, backend: str | None = None) -> str:
        """'vmap', 'unrolled' or 'map': how the members share the program on `backend` (default: JAX's). One member
        is always 'unrolled': exactly the computation of a plain run."""
        if self.single:
            return "unrolled"
        if self.mode != "auto":
            return self.mode
        return "unrolled" if (backend or jax.default_backend()) == "cpu" else "vmap"

    def over(self, f: Callable, in_axes: Sequence[Any]) -> Callable:
        """`f` applied to every member, its results stacked on a new leading member axis.

        `in_axes` has one entry per argument: 0 where the argument carries the member axis, None where all members
        share it, or a dict of such entries for a dict argument.
        """
        mode = self.program_mode()
        if mode == "vmap":
            return jax.vmap(f, in_axes=tuple(in_axes))
        if mode == "map":

            def mapped(*args):
                stacked = [_member_part(a, axes) for a, axes in zip(args, in_axes, strict=True)]
                return jax.lax.map(
                    lambda parts: f(*(_merged(a, axes, p) for a, axes, p in zip(args, in_axes, parts, strict=True))),
                    stacked,
                )

            return mapped

        def unrolled(*args):
            outputs = [
                f(*(_member(a, axes, k) for a, axes in zip(args, in_axes, strict=True))) for k in range(self.count)
            ]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

        return unrolled

    # --- on disk
    @property
    def folders(self) -> list[str]:
        """Each member's folder in the run directory: the run's own ('') for a single run, else `seed<s>`."""
        return [""] if self.single else [f"seed{s}" for s in self.seeds]

    def to_disk(self, tree: Any) -> Any:
        """A tree of stacked arrays as checkpoints hold it: without the member axis for a single run."""
        return jax.tree.map(lambda x: x[0], tree) if self.single else tree

    def from_disk(self, tree: Any) -> Any:
        """The inverse of `to_disk`."""
        return jax.tree.map(lambda x: x[None], tree) if self.single else tree

    def list_to_disk(self, values: list) -> Any:
        """A per-member list (the schedules' states) as checkpoints hold it: the one value for a single run."""
        return values[0] if self.single else list(values)

    def list_from_disk(self, value: Any) -> list:
        """The inverse of `list_to_disk`."""
        return [value] if self.single else list(value)

    def signature(self) -> dict[str, int]:
        """What a checkpoint's model signature adds for the members: nothing for a single run."""
        return {} if self.single else {"runs": self.count}


def _member_part(argument: Any, axes: Any) -> Any:
    """The parts of one argument that carry the member axis (None where all members share it)."""
    if axes is None:
        return None
    if isinstance(axes, dict):
        return {key: _member_part(value, axes.get(key)) for key, value in argument.items()}
    return argument


def _merged(argument: Any, axes: Any, part: Any) -> Any:
    """One member's argument: its `part` (from `_member_part`, without the member axis) where the argument carries
    the member axis, the shared argument elsewhere."""
    if axes is None:
        return argument
    if isinstance(axes, dict):
        return {key: _merged(value, axes.get(key), part[key]) for key, value in argument.items()}
    return part


def _member(argument: Any, axes: Any, k: int) -> Any:
    """Member k's part of one argument (see `Members.over`)."""
    if axes is None:
        return argument
    if isinstance(axes, dict):
        return {key: _member(value, axes.get(key), k) for key, value in argument.items()}
    return jax.tree.map(lambda x: x[k], argument)
