"""What a resumed run may change, and what it may not.

A run's record is its config: a result is only as good as the config it says it was trained with. When a run
resumes, the config it is given is compared with the run's own (config.json, with the changes accepted at earlier
resumes), key by key:

- keys that change what the run computes (the model and its options, the batch size, the optimiser, the schedule,
  the data and its augmentation, the seed, the runs, the dtype, the BN options, and everything not named below) must
  match, or the run stops before any work, naming each key with its saved and its new value;
- keys that only change how the run is carried out may change (`FREE`): where the data is, how many workers read it,
  how often the run logs, evaluates and checkpoints, how many checkpoints it keeps, how many steps one call into the
  devices makes, how the members share the program, which library computes the convolutions and batch norms;
- `num_steps` may change to any step not behind the run's: a longer run extends it, a shorter one ends it sooner.

A deliberate change of a computing key (a longer schedule with new boundaries, say) is accepted when the command
names it (`--accept_changes=schedule.boundaries`). Every accepted change is recorded in the run directory
(`resumes.jsonl`, summarised in result.json), and config.json stays the config the run started with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import ml_collections

from resnet_jax.core.errors import ConfigError, ModelMismatchError

FREE = (
    "log_every_steps",
    "eval.every_steps",
    "eval.batch_size",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "steps_per_dispatch",
    "dispatch_loop",
    "multi_run",
    "model.conv_impl",
    "model.bn_impl",
    "prepare_from",
    "data.data_dir",
    "data.worker_count",
    "data.read_threads",
    "data.prefetch",
    "data.retries",
    "data.retry_backoff_seconds",
)
"""Keys a resumed run may change: where the data is and how it is read, how often the run logs, evaluates and
checkpoints, how many checkpoints it keeps, how many steps one call into the devices makes, how the members share
the program and which library computes the convolutions and batch norms (the same numbers within float32
rounding). None changes the steps the run takes, with two exceptions `free_keys` withholds."""


SAME_WEIGHTS = ("model.bn_group_size", "model.bn_momentum", "model.bn_epsilon", "model.bn_unbiased_var")
"""Model keys that change what a run computes but not its weights: refused on resume like any computing key, but a
change that can be accepted (a checkpoint of the model holds the same variables). A key missing from a saved config
(a run started before the key existed) reads as None."""


def same_weights(model_key: str) -> bool:
    """Whether a key of the model config ('conv_impl', 'bn_momentum', ...) leaves the model's weights as they are:
    a checkpoint of the model holds the same variables whatever its value (free, or a change that can be accepted).
    The one answer for check_resume and for the checkpoints' own model check."""
    return f"model.{model_key}" in FREE or f"model.{model_key}" in SAME_WEIGHTS


def free_keys(config: ml_collections.ConfigDict) -> set[str]:
    """`FREE`, less what changes the run under `config`: the log and evaluation intervals when the schedule decides
    on measured errors (a warm-up until an error, or the plateau rule: decided at logs and evaluations), and the
    worker count when grain feeds the run (its iterator state is per worker)."""
    free = set(FREE)
    if config.schedule.kind == "plateau" or config.schedule.warmup_lr is not None:
        free -= {"log_every_steps", "eval.every_steps"}
    if not config.data.on_device:
        free.discard("data.worker_count")
    return free


def flatten(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """{dotted key: value} of a config, values as JSON gives them back (tuples as lists)."""
    tree = json.loads(config.to_json_best_effort()) if isinstance(config, ml_collections.ConfigDict) else config

    def walk(node: dict, prefix: str) -> dict[str, Any]:
        flat = {}
        for key, value in node.items():
            if isinstance(value, dict):
                flat.update(walk(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    return walk(tree, "")


def differences(saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> dict[str, list]:
    """{key: [saved value, new value]} for every key whose value differs."""
    a, b = flatten(saved), flatten(new)
    return {key: [a.get(key), b.get(key)] for key in sorted({*a, *b}) if a.get(key) != b.get(key)}


def check_resume(
    saved: ml_collections.ConfigDict,
    new: ml_collections.ConfigDict,
    step: int,
    accepted: Iterable[str] = (),
    workdir: str = "",
) -> dict[str, list]:
    """The changes a run resuming at `step` with config `new` makes to its config `saved`; ConfigError if any is not
    free and not `accepted` (naming each, with its saved and new value, and the ways on), if `num_steps` is behind
    `step`, or if `steps_per_dispatch` does not divide `step`; ModelMismatchError if an unaccepted one is of the
    model."""
    changes = differences(saved, new)
    free, accepted = free_keys(saved) & free_keys(new), set(accepted)
    unknown = accepted - set(flatten(new))
    if unknown:
        raise ConfigError(f"--accept_changes names keys the config does not have: {', '.join(sorted(unknown))}.")
    refused = {k: v for k, v in changes.items() if k not in free and k not in accepted and k != "num_steps"}
    model = {k: v for k, v in refused.items() if k.startswith("model.") and not same_weights(k.removeprefix("model."))}
    if model:  # its checkpoints cannot hold another model's weights: no change to accept
        listed = "; ".join(f"{k} saved {a!r}, now {b!r}" for k, (a, b) in model.items())
        raise ModelMismatchError(
            f"The run in {workdir} is of another model: {listed}. Use a new --workdir, or the model config the run "
            f"was started with."
        )
    if refused:
        listed = "; ".join(f"{k} saved {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ConfigError(
            f"The run in {workdir} resumes at step {step} with a config that changes what it computes: {listed}. "
            f"Rerun with the saved values, use a new --workdir, or accept the change deliberately with "
            f"--accept_changes={','.join(refused)} (it is recorded in the run's resumes.jsonl)."
        )
    if new.num_steps < step:
        raise ConfigError(
            f"config.num_steps={new.num_steps} is behind the run in {workdir}, which is at step {step}: give "
            f"num_steps >= {step}, or evaluate its checkpoints (python -m resnet_jax.evaluate --step=N)."
        )
    check_dispatch(step, new.steps_per_dispatch, workdir, saved.steps_per_dispatch)
    return changes


def check_dispatch(step: int, steps_per_dispatch: int, workdir: str = "", saved: int | None = None) -> None:
    """ConfigError if a run resuming at `step` cannot do so in dispatches of `steps_per_dispatch`: the loop logs,
    evaluates and saves at multiples of it, and from a step it does not divide would never reach one again (nor stop
    at num_steps). Asked before the set-up of the newest checkpoint's step, and after it of the step restored."""
    if step % steps_per_dispatch:
        was = f" (the saved {saved} does)" if saved else ""
        raise ConfigError(
            f"config.steps_per_dispatch={steps_per_dispatch} does not divide step {step}, at which the run in "
            f"{workdir} resumes: it would never again reach a step at which the loop logs, evaluates or saves. Give "
            f"one that divides {step}{was}, or a new --workdir."
        )
