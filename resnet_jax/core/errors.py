"""The errors a run reports to a person, rather than a bug's traceback.

Two kinds. A `UserError` is something the user fixes before running again (a config key, a missing dataset, a
workdir); its message says what is wrong and how to fix it, and the command lines print it alone and exit with
status 2. A `RunStopped` error ends a run that was going: a NaN, an input pipeline past its retries, a full disk, no
checkpoint that restores. Its message says what happened and what a rerun does; what the run had saved is intact, and
the command lines print it alone and exit with status 1.
"""

from __future__ import annotations


class UserError(Exception):
    """Something to fix before running again; the message says what and how."""


class ConfigError(UserError, ValueError):
    """A config file, key or value is wrong."""


class WorkdirError(UserError, OSError):
    """The workdir cannot be created or written, is not a run's, or lacks the checkpoint asked for."""


class DatasetMissingError(UserError, FileNotFoundError):
    """A dataset (or part of one) is not prepared; the message gives the command that prepares it."""


class PreparationError(UserError, ValueError):
    """A dataset's source files are missing, unreadable or not what they should be; nothing was kept."""


class ModelMismatchError(UserError, ValueError):
    """The workdir holds checkpoints of another model than the one this run builds."""


class WeightsError(UserError, OSError):
    """Published weights cannot be had as they should be (no network, a wrong hash, a truncated file); the message says
    where to put the file by hand, and nothing bad is left in the cache."""


class RunStopped(Exception):
    """The run stopped; what it saved is intact and the message says what a rerun does."""


class NonFiniteLossError(RunStopped, FloatingPointError):
    """The loss or the parameters became NaN or Inf; the last good checkpoints are kept."""


class InputPipelineError(RunStopped, RuntimeError):
    """The input pipeline kept failing at the operating-system level after its retries."""


class CheckpointSaveError(RunStopped, OSError):
    """A checkpoint could not be written (a full disk, a lost permission); the earlier ones are intact."""


class NoRestorableCheckpointError(RunStopped, RuntimeError):
    """The workdir has checkpoints, and none of them restores."""
