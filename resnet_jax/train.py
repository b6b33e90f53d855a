"""Training and evaluation of one run, resumable and preemption-safe.

`train_and_evaluate(config, workdir)` is the whole job behind `python -m resnet_jax.main`: it restores the latest
checkpoint of `workdir` if there is one, trains to `config.num_steps` with periodic evaluation and asynchronous
checkpoints, and on SIGTERM saves and returns. Metrics are accumulated on the devices and fetched every
`log_every_steps`, so the host never waits for the device inside the loop.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from resnet_jax import data
from resnet_jax.data import preparation
from resnet_jax.checkpoints import Checkpointer
from resnet_jax.config import model_from_config, validate
from resnet_jax.evaluation import evaluate
from resnet_jax.metric_writer import MetricWriter
from resnet_jax.models import input_shape
from resnet_jax.optim import make_optimizer
from resnet_jax.plots import plot_training_curves
from resnet_jax.schedules import PlateauSchedule, StepSchedule
from resnet_jax.sharding import check_divisible, make_mesh, replicated
from resnet_jax.train_step import TrainState, create_train_state, make_train_step

CONFIG_FILE = "config.json"


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN or Inf; the last good checkpoint is kept."""


class InputPipelineError(RuntimeError):
    """The input pipeline broke at the operating-system level (a grain worker's shared memory, a file); the run's
    checkpoints are intact, so rerunning resumes it."""


def make_schedule(config: ml_collections.ConfigDict) -> StepSchedule | PlateauSchedule:
    s = config.schedule
    if s.kind == "plateau":
        return PlateauSchedule(s.base_lr, s.factor, s.plateau_patience, s.plateau_min_delta, s.plateau_max_drops)
    return StepSchedule(s.base_lr, s.boundaries, s.factor, s.warmup_lr, s.warmup_until_error, s.ramp_steps)


def model_signature(config: ml_collections.ConfigDict, params: Any) -> dict[str, Any]:
    """What must not change when a run resumes: the model's options and every parameter's shape."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {**config.model.to_dict(), "num_parameters": int(sum(x.size for _, x in flat)),
            "parameter_shapes": {jax.tree_util.keystr(p): list(x.shape) for p, x in flat}}


def ensure_dataset(config: ml_collections.ConfigDict) -> None:
    """Prepares the dataset when it is missing and the config says where from (`prepare_from`)."""
    try:
        data.num_examples(config.data, "train")
    except data.DatasetMissingError:
        if config.prepare_from is None:
            raise
        print(f"Dataset {config.data.name} is missing; preparing it from {config.prepare_from}.", flush=True)
        if jax.process_index() == 0:
            preparation.prepare(config.data.name, source=config.prepare_from, data_dir=config.data.data_dir)
        _sync("dataset prepared")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class _Preemption:
    """Turns SIGTERM (how Cloud TPU and most schedulers preempt) into a flag the loop checks."""

    def __init__(self):
        self.event = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.event.set())


def _all_finite(tree: Any) -> bool:
    return bool(jax.jit(lambda t: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(t)])))(tree))


def run_evaluation(config: ml_collections.ConfigDict, model: Any, variables: Any, mesh: Any,
                   protocol: str | None = None, split: str | None = None) -> dict[str, float]:
    protocol = protocol or config.eval.protocol
    batches = data.eval_iterator(config.data, split=split or config.eval.split, protocol=protocol,
                                 global_batch_size=config.eval.batch_size)
    try:
        return evaluate(model, variables, batches, protocol, mesh)
    finally:
        batches.close()  # stops grain's worker processes


def recompute_batch_stats(config: ml_collections.ConfigDict, state: TrainState, mesh: Any) -> Any:
    """BN population statistics as a plain average over `bn_recompute_examples` training images (the authors'
    release), each batch's statistics taken over the whole batch rather than per group."""
    model = model_from_config(ml_collections.ConfigDict({**config.model.to_dict(), "bn_group_size": None,
                                                         "bn_momentum": 0.0}))

    @jax.jit
    def batch_stats_of(variables, images):
        return model.apply(variables, images, train=True, mutable=["batch_stats"])[1]["batch_stats"]

    iterator = data.train_iterator(config.data, global_batch_size=config.batch_size, seed=config.seed + 1)
    total, batches = None, 0
    while batches * config.batch_size < config.bn_recompute_examples:
        stats = batch_stats_of(state.variables(), data.put_on_mesh(next(iterator), mesh)["image"])
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        batches += 1
    iterator.close()
    return jax.tree.map(lambda x: x / batches, total)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir` (resuming if it has checkpoints); returns the final evaluation, or {} if the run
    was preempted (SIGTERM) and saved."""
    validate(config)
    mesh = make_mesh()
    check_divisible(config.batch_size, mesh, "config.batch_size")
    check_divisible(config.eval.batch_size, mesh, "config.eval.batch_size")
    ensure_dataset(config)
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)

    model = model_from_config(config.model)
    optimizer = make_optimizer(**config.optimizer)
    schedule = make_schedule(config)
    state = create_train_state(model, optimizer, input_shape(config.model.name), config.seed, mesh)
    train_iter = data.train_iterator(config.data, global_batch_size=config.batch_size, seed=config.seed)
    checkpointer = Checkpointer(workdir_path / "checkpoints", model_signature(config, state.params),
                                keep=config.keep_checkpoints)
    if checkpointer.latest_step is not None:
        state, data_state, schedule_state = checkpointer.restore(state)
        train_iter.set_state(data_state)
        schedule.load_state_dict(schedule_state)
    writer = MetricWriter(workdir, config.num_steps)
    if checkpointer.latest_step is not None:
        writer.log(f"Resumed {workdir} at step {int(state.step)}.")
    if jax.process_index() == 0:
        (workdir_path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
    train_step = make_train_step(model, optimizer, mesh)
    preemption = _Preemption()
    step = int(state.step)
    sums, window_start, window_step = None, time.perf_counter(), step
    batches = data.DevicePrefetchIterator(train_iter, mesh)
    result: dict[str, float] = {}
    # However the loop ends (finished, preempted, NaN, a broken pipeline), a save in flight completes (close waits
    # for it) and grain's workers and the event files are closed.
    try:
        while step < config.num_steps:
            try:
                batch = next(batches)
            except OSError as error:
                saved = checkpointer.latest_step  # the save in flight, if any, completes below (finally)
                resume = (f"the rerun resumes from the latest checkpoint, step {saved}, and redoes the steps after it"
                          if saved is not None else "no checkpoint was written yet, so the rerun starts from step 0")
                raise InputPipelineError(
                    f"The training input pipeline failed before step {step + 1}: {error!r}. If the cause was passing "
                    f"(it is not for a full /dev/shm or disk), rerun the same command, on every host: {resume}."
                ) from error
            learning_rate = schedule(step)
            state, metrics = train_step(state, batch, jnp.float32(learning_rate))
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
            step += 1
            last = step == config.num_steps

            if step % config.log_every_steps == 0 or last:
                totals = jax.tree.map(lambda x: float(np.asarray(x)), sums)
                loss, error = totals["loss"] / totals["examples"], totals["errors"] / totals["examples"]
                if not np.isfinite(loss):
                    raise NonFiniteLossError(
                        f"The training loss became {loss} between steps {window_step} and {step}. The last good "
                        f"checkpoint (step {checkpointer.latest_step}) is kept; lower config.schedule.base_lr, check "
                        "the data, or use float32 (config.model.dtype).")
                images_per_sec = totals["examples"] / (time.perf_counter() - window_start)
                writer.write(step, "train", {"loss": loss, "error": error, "learning_rate": learning_rate,
                                             "images_per_sec": images_per_sec})
                writer.progress(step, loss, error, learning_rate, images_per_sec)
                schedule.observe(step, train_error=error)
                sums, window_start, window_step = None, time.perf_counter(), step

            if last and config.bn_recompute_examples:
                batch_stats = recompute_batch_stats(config, state, mesh)
                state = state.replace(batch_stats=jax.device_put(batch_stats, replicated(mesh)))
            if step % config.eval.every_steps == 0 or last:
                result = run_evaluation(config, model, state.variables(), mesh)
                writer.write(step, "eval", result)
                writer.log(f"step {step}  {config.eval.split} error: top-1 {100 * result['top1_error']:.2f}%  top-5 "
                           f"{100 * result['top5_error']:.2f}% ({result['examples']} examples)")
                schedule.observe(step, val_error=result["top1_error"])
            if last and config.eval.final_protocol not in (None, config.eval.protocol):
                result = run_evaluation(config, model, state.variables(), mesh, protocol=config.eval.final_protocol)
                writer.write(step, f"eval_{config.eval.final_protocol}", result)
                writer.log(f"final {config.eval.final_protocol} {config.eval.split} error: top-1 "
                           f"{100 * result['top1_error']:.2f}%  top-5 {100 * result['top5_error']:.2f}%")

            preempted = preemption.event.is_set() or checkpointer.reached_preemption(step)
            if step % config.checkpoint_every_steps == 0 or last or preempted:
                if not _all_finite(state.params):
                    raise NonFiniteLossError(f"The parameters became NaN or Inf by step {step}; the last good "
                                             f"checkpoint (step {checkpointer.latest_step}) is kept.")
                checkpointer.save(step, state, batches.get_state(), schedule.state_dict())
            if preempted:
                checkpointer.wait()
                writer.log(f"Preempted: saved step {step} to {workdir}; rerun the same command to resume.")
                return {}

        if not result:  # the run had already finished
            result = run_evaluation(config, model, state.variables(), mesh,
                                    protocol=config.eval.final_protocol or config.eval.protocol)
    finally:
        checkpointer.close()
        writer.close()
        train_iter.close()
    if jax.process_index() == 0:
        plot_training_curves([workdir], [config.model.name], workdir_path / "curves.png",
                             title=f"{config.model.name} on {config.data.name}")
        (workdir_path / "result.json").write_text(json.dumps(
            {**result, "protocol": config.eval.final_protocol or config.eval.protocol, "split": config.eval.split},
            indent=2))
    return result


def load_run(workdir: str | Path, step: int | None = None) -> tuple[ml_collections.ConfigDict, Any, TrainState]:
    """(config, model, state) of the checkpoint of a run at `step` (default: the latest), on all devices."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not the workdir of a resnet_jax run.")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    mesh = make_mesh()
    model = model_from_config(config.model)
    template = create_train_state(model, make_optimizer(**config.optimizer), input_shape(config.model.name),
                                  config.seed, mesh)
    checkpointer = Checkpointer(epath.Path(workdir) / "checkpoints", model_signature(config, template.params))
    if checkpointer.latest_step is None:
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
    state, _, _ = checkpointer.restore(template, step)
    checkpointer.close()
    return config, model, state
