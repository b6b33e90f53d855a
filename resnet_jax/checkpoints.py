"""Checkpoints of a run: model and optimiser state, the input pipeline's position, the schedule, and what model
they belong to, saved together by orbax (asynchronously, keeping the last few).

orbax writes each checkpoint into a temporary directory and renames it only when complete, so a process killed
mid-save leaves the previous checkpoint as the latest one; restore never sees a half-written step.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from etils import epath


class ModelMismatchError(ValueError):
    """The workdir holds checkpoints of another model than the one this run builds."""


def _encode(data_state: Any) -> Any:
    # grain's DataLoader iterators give bytes, dataset iterators a dict; JSON holds both.
    if isinstance(data_state, bytes):
        return {"bytes_base64": base64.b64encode(data_state).decode()}
    return data_state


def _decode(saved: Any) -> Any:
    if isinstance(saved, dict) and set(saved) == {"bytes_base64"}:
        return base64.b64decode(saved["bytes_base64"])
    return saved


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly where it stopped.

    Args:
      directory: local path or gs:// URL.
      model_signature: JSON-able description of the model (name, options, parameter shapes); resuming with another
        one is a `ModelMismatchError` rather than an obscure shape error deep inside orbax.
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | Path, model_signature: dict[str, Any], keep: int = 3):
        self.model_signature = model_signature
        directory = str(directory)
        if "://" not in directory:  # orbax needs absolute local paths (it fails late, in the async save, otherwise)
            directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            epath.Path(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                                 cleanup_tmp_directories=True))

    @property
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: Any, schedule_state: dict[str, Any]) -> None:
        """Starts an asynchronous save; the arrays are copied first, so training may go on."""
        meta = {"model": self.model_signature, "schedule": schedule_state}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(_encode(data_state)),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, state_template: Any, step: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
        """Returns (state, data iterator state, schedule state) of `step` (default: the latest)."""
        step = self.latest_step if step is None else step
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta["model"] != self.model_signature:
            saved, wanted = meta["model"], self.model_signature
            changed = {k: (saved.get(k), wanted.get(k)) for k in sorted({*saved, *wanted})
                       if saved.get(k) != wanted.get(k) and k != "parameter_shapes"}
            raise ModelMismatchError(
                f"The checkpoints in {self.manager.directory} are of another model: "
                + ", ".join(f"{k} saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
                + ". Use a new --workdir, or the model config the run was started with.")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state_template), data=ocp.args.JsonRestore()))
        return restored["state"], _decode(restored["data"]), meta["schedule"]

    def reached_preemption(self, step: int) -> bool:
        """True on every process once a preemption notice reached any of them (multi-host safe)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
