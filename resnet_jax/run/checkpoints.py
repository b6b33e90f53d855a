"""Checkpoints of a run: model and optimiser state, the input pipeline's position, the schedule, and what model
they belong to, saved together by orbax (asynchronously, keeping the last few).

orbax writes each checkpoint into a temporary directory and renames it only when complete, so a process killed
mid-save leaves the previous checkpoint as the latest one. What can still go wrong is handled here, with every
process of a multi-host run taking the same decision:
  - a checkpoint that does not restore (a truncated file, a missing item, damaged metadata) is moved aside, untouched
    and under its own name, into `damaged_checkpoints/`, and the next older one is tried; only when none restores does
    the run stop, naming each checkpoint and its error;
  - a save that fails (a full disk, a lost permission) stops the run with how much space a checkpoint needs and where;
    the earlier checkpoints stay intact.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from resnet_jax.core import multihost
from resnet_jax.core.errors import (
    CheckpointSaveError,
    ModelMismatchError,
    NoRestorableCheckpointError,
    WorkdirError,
)
from resnet_jax.recipe.changes import same_weights
from resnet_jax.recipe.members import Members
from resnet_jax.run.rundir import RunDir, local_path


def model_signature(model_config: ml_collections.ConfigDict, members: Members, params: Any) -> dict[str, Any]:
    """What must not change when a run resumes: the model's options that decide its weights (not those that keep
    them, `changes.same_weights`, which check_resume rules on), every parameter's shape (as the checkpoint holds
    them), the members."""
    flat = jax.tree_util.tree_flatten_with_path(jax.eval_shape(members.to_disk, params))[0]
    return {
        **_deciding_weights(model_config.to_dict()),
        "num_parameters": int(sum(x.size for _, x in flat)),
        "parameter_shapes": {jax.tree_util.keystr(p): list(x.shape) for p, x in flat},
        **members.signature(),
    }


def _deciding_weights(signature: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in signature.items() if not same_weights(k)}


@dataclasses.dataclass
class Restored:
    step: int
    state: Any  # with the members' leading axis
    data_state: Any
    schedule_states: list  # one per member


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly where it stopped.

    Args:
      run_dir: the run's directory (checkpoints in its `checkpoints/`; local or gs://).
      members: the run's members: the state has their leading axis, which a single run's checkpoints do not hold
        (`Members.to_disk`), and the schedules' states are one per member.
      model_signature: JSON-able description of the model (`model_signature`); resuming with another one is a
        `ModelMismatchError` rather than an obscure shape error deep inside orbax.
      keep: how many recent checkpoints to keep.
      read_only: never move damaged checkpoints (for tools that only read a run).
    """

    def __init__(
        self,
        run_dir: RunDir,
        members: Members,
        model_signature: dict[str, Any],
        keep: int = 3,
        read_only: bool = False,
    ):
        self.run_dir = run_dir
        self.members = members
        self._to_disk, self._from_disk = jax.jit(members.to_disk), jax.jit(members.from_disk)
        self.model_signature = model_signature
        self.read_only = read_only
        directory = os.fspath(run_dir.checkpoints)
        if "://" not in directory:  # orbax needs absolute local paths (it fails late, in the async save, otherwise)
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)
        # A reader neither creates the folder nor removes unfinished saves: those may be a running trainer's.
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)
        self._bytes_per_checkpoint = 0

    @property
    def latest_step(self) -> int | None:
        """The newest step saved, a save in flight included (orbax lists a step from the moment its save starts; its
        own latest_step is the last one saved): the one a rerun resumes from once the run has closed."""
        return max(self.manager.all_steps(), default=None)

    def resume_point(self) -> str:
        """Where a rerun resumes, in words: from the newest checkpoint (one in flight is whole once the run closes its
        checkpointer, as every way out of the loop does) or from the start."""
        return _resume_point(self.latest_step)

    # --- saving
    def save(self, step: int, state: Any, data_state: Any, schedule_states: list) -> None:
        """Starts an asynchronous save (the arrays are copied first, so training may go on). A failure of this save,
        or one of the previous save surfacing now, stops the run on every process with `CheckpointSaveError`."""
        state = self._to_disk(state)
        self._bytes_per_checkpoint = sum(x.nbytes for x in jax.tree.leaves(state))
        meta = {"model": self.model_signature, "schedule": self.members.list_to_disk(schedule_states)}
        error = None
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - every failure to write is reported alike, by every process
            error = e
        self._check_saved(error, f"step {step}")

    def wait(self) -> None:
        """Waits for the save in flight; `CheckpointSaveError` if it failed."""
        error = None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - as in save()
            error = e
        self._check_saved(error, "the last save")

    def _check_saved(self, error: Exception | None, what: str) -> None:
        failing = multihost.first_failing_process(error is not None)
        if failing is None:
            return
        needed = self._bytes_per_checkpoint / 2**20
        where = local_path(self.directory)
        free = f", and {shutil.disk_usage(where).free / 2**20:,.0f} MiB are free there" if where else ""
        cause = f"{error!r}" if error is not None else f"see process {failing}'s log"
        whole = max(self.run_dir.saved_steps(), default=None)  # not the failed save, which orbax may still list (on
        # a local disk a save gets its step's name once whole; on gs:// a marker file says so, read on restore)
        raise CheckpointSaveError(
            f"Saving the checkpoint of {what} into {self.directory} failed: {cause}. A checkpoint of this run needs "
            f"about {needed:,.0f} MiB{free}. The earlier checkpoints are intact; free space (or choose a --workdir "
            f"on a larger disk), then rerun the same command: it resumes from {_resume_point(whole)}."
        ) from error

    # --- restoring
    def restore(self, template: Any, step: int | None = None) -> Restored | None:
        """The checkpoint of `step`, or with None the newest one that restores; None if there is none at all.

        A checkpoint that fails to restore is moved aside (unless read-only) and the next older one is tried, every
        process deciding alike. `NoRestorableCheckpointError` if checkpoints exist and none restores.
        """
        saved = sorted(self.manager.all_steps(), reverse=True)
        if step is not None and step not in saved:
            raise WorkdirError(f"{self.directory} has no checkpoint of step {step}; it has {sorted(saved) or 'none'}.")
        steps = saved if step is None else [step]
        if not steps:
            return None
        on_disk = self._to_disk(template)
        failures: list[tuple[int, str]] = []
        for candidate in steps:
            restored, error = self._try_restore(on_disk, candidate)
            failing = multihost.first_failing_process(error is not None)
            if failing is None:
                if failures:
                    logging.warning(
                        "Resuming from checkpoint %d; newer ones did not restore: %s",
                        candidate,
                        "; ".join(f"{s}: {e}" for s, e in failures),
                    )
                return restored
            reason = repr(error) if error is not None else f"it failed on process {failing}"
            failures.append((candidate, reason))
            logging.error("Checkpoint %d in %s does not restore: %s", candidate, self.directory, reason)
            if step is None and not self.read_only:
                self._move_aside(candidate)
        listing = "; ".join(f"step {s}: {e}" for s, e in failures)
        moved = (
            ""
            if self.read_only or step is not None
            else f" They were moved into {self.directory.parent}/damaged_checkpoints/ untouched."
        )
        raise NoRestorableCheckpointError(
            f"No checkpoint in {self.directory} restores ({listing}).{moved} Rerun with a new --workdir to start "
            "afresh, or restore a copy of the checkpoints."
        )

    def _try_restore(self, on_disk: Any, step: int) -> tuple[Restored | None, Exception | None]:
        """Checkpoint `step` restored into `on_disk` (the template as checkpoints hold it), or the error."""
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as error:  # noqa: BLE001 - any damage means: try an older checkpoint
            return None, error
        self._check_model(meta["model"])
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(on_disk), data=ocp.args.JsonRestore()),
            )
        except Exception as error:  # noqa: BLE001 - as above
            return None, error
        state = self._from_disk(restored["state"])
        return Restored(step, state, restored["data"], self.members.list_from_disk(meta["schedule"])), None

    def _check_model(self, saved: dict[str, Any]) -> None:
        wanted, saved = self.model_signature, _deciding_weights(saved)  # older checkpoints recorded every option
        if saved == wanted:
            return
        changed = {
            k: (saved.get(k), wanted.get(k))
            for k in sorted({*saved, *wanted})
            if saved.get(k) != wanted.get(k) and k != "parameter_shapes"
        }
        raise ModelMismatchError(
            f"The checkpoints in {self.directory} are of another model: "
            + ", ".join(f"{k} saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
            + ". Use a new --workdir, or the model config the run was started with."
        )

    def _move_aside(self, step: int) -> None:
        """Moves checkpoint `step` into a fresh folder of damaged_checkpoints/, under its own name (process 0), and
        reopens the manager so that it no longer sees it."""
        if multihost.is_main():
            destination = self.run_dir.damaged_checkpoints()
            destination.mkdir(parents=True, exist_ok=True)
            source = self.directory / str(step)
            try:
                source.rename(destination / str(step))
            except OSError as error:
                raise NoRestorableCheckpointError(
                    f"Checkpoint {step} in {self.directory} does not restore, and moving it aside into {destination} "
                    f"failed ({error!r}); move it out of {self.directory} by hand and rerun."
                ) from error
            logging.warning("Moved checkpoint %d aside, untouched, to %s.", step, destination / str(step))
        multihost.sync(f"checkpoint {step} moved aside")
        self.manager.close()
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)

    def reached_preemption(self, step: int) -> bool:
        """True on every process once a preemption notice reached any of them (multi-host safe)."""
        return self.manager.reached_preemption(step)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Waits for a save in flight, then releases the manager. A failed save raises `CheckpointSaveError`."""
        try:
            self.wait()
        finally:
            # The manager removes unfinished saves in a background thread that its close() does not wait for; one
            # still running at interpreter exit (a run that stops before its first save) prints a traceback.
            getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
            self.manager.close()


def _resume_point(step: int | None) -> str:
    return f"step {step}" if step is not None else "the start (no checkpoint was saved yet)"
