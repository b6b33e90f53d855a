"""Training and evaluation of a run, resumable, preemption-safe and self-healing.

`train_and_evaluate(config, workdir)` is the whole job behind `python -m resnet_jax.main`, and reads top to bottom:

  set-up   the newest checkpoint that restores, the feed, the jitted dispatch and evaluation step (built once);
  loop     one dispatch of `steps_per_dispatch` steps, then the periodic actions: log, evaluate, checkpoint, and stop
           on preemption (SIGTERM), saving first;
  end      the last log, BN statistics recomputed if asked, the final evaluation, result.json and the curves.

A multi-run (`config.runs` > 1) trains its members in the same program and reports each of them and their mean.
Metrics stay on the device between logs, so the host never waits inside the loop.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax import data, datasets, multihost
from resnet_jax.checkpoints import Checkpointer, model_signature
from resnet_jax.config import model_from_config, validate
from resnet_jax.data import feeds, on_device, preparation
from resnet_jax.errors import ConfigError, InputPipelineError, NonFiniteLossError
from resnet_jax.evaluation import EvalResult, Evaluator, describe_summary, summarize
from resnet_jax.metric_writer import MetricWriter
from resnet_jax.models import input_shape
from resnet_jax.optim import make_optimizer
from resnet_jax.plots import plot_training_curves
from resnet_jax.rundir import RunDir
from resnet_jax.schedules import PlateauSchedule, StepSchedule
from resnet_jax.sharding import check_divisible, make_mesh, replicated
from resnet_jax.train_step import TrainState, create_train_state, make_dispatch, over_runs


def make_schedule(config: ml_collections.ConfigDict) -> StepSchedule | PlateauSchedule:
    s = config.schedule
    if s.kind == "plateau":
        return PlateauSchedule(
            s.base_lr, s.factor, s.plateau_patience, s.plateau_min_delta, s.plateau_max_drops, signal=s.plateau_on
        )
    return StepSchedule(s.base_lr, s.boundaries, s.factor, s.warmup_lr, s.warmup_until_error, s.ramp_steps)


def ensure_dataset(config: ml_collections.ConfigDict) -> None:
    """Prepares the dataset when it is missing and the config says where from (`prepare_from`)."""
    try:
        data.num_examples(config.data, "train")
    except data.DatasetMissingError:
        if config.prepare_from is None:
            raise
        logging.info("Dataset %s is missing; preparing it from %s.", config.data.name, config.prepare_from)
        if multihost.is_main():
            preparation.prepare(config.data.name, source=config.prepare_from, data_dir=config.data.data_dir)
        multihost.sync("dataset prepared")


def make_feed(
    data_config: ml_collections.ConfigDict, mesh: Any, *, batch_size: int, steps: int, seed: int, runs: int = 1
) -> feeds.Feed:
    """The training stream of `seed` (of seeds `seed .. seed + runs - 1` for a multi-run) in dispatches of `steps`
    batches: on the devices, or from grain."""
    if data_config.on_device:
        train_data = on_device.TrainData.load(data_config, mesh)
        if steps * batch_size > train_data.num_examples:
            raise ConfigError(
                f"config.steps_per_dispatch * batch_size = {steps} * {batch_size} exceeds the "
                f"{train_data.num_examples} training examples; a dispatch may span at most one epoch "
                "boundary: lower steps_per_dispatch."
            )
        return feeds.DeviceFeed(train_data, batch_size, mesh, seed if runs == 1 else list(range(seed, seed + runs)))
    iterator = data.train_iterator(data_config, global_batch_size=batch_size, seed=seed)
    finish = datasets.get(data_config.name).imagenet_like  # uint8 crops, finished on the devices
    normalization = on_device.normalization_arrays(data_config) if finish else None
    return feeds.HostFeed(iterator, mesh, steps, normalization=normalization)


class _Preemption:
    """Turns SIGTERM (how Cloud TPU and most schedulers preempt) into a flag the loop checks."""

    def __init__(self):
        self.event = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.event.set())


def _per_member(tree: Any) -> list[dict[str, float]]:
    """Device metric sums (scalars, or [runs] arrays) as one dict of floats per member."""
    arrays = {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in tree.items()}
    return [{k: float(v[i]) for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))]


def _as_list(result: EvalResult | list[EvalResult]) -> list[EvalResult]:
    return result if isinstance(result, list) else [result]


def recompute_batch_stats(config: ml_collections.ConfigDict, state: TrainState, mesh: Any) -> Any:
    """BN population statistics as a plain average over `bn_recompute_examples` training images (the authors'
    release), each batch's statistics taken over the whole batch rather than per group, from the training stream of
    seed + 1 (per member, for a multi-run)."""
    model = model_from_config(
        ml_collections.ConfigDict({**config.model.to_dict(), "bn_group_size": None, "bn_momentum": 0.0})
    )
    batches = -(-config.bn_recompute_examples // config.batch_size)
    # On the devices all batches go in one dispatch if they span at most one epoch boundary; from grain, one by one.
    fits = config.data.on_device and batches * config.batch_size <= data.num_examples(config.data, "train")
    per_dispatch = batches if fits else 1
    feed = make_feed(
        config.data, mesh, batch_size=config.batch_size, steps=per_dispatch, seed=config.seed + 1, runs=config.runs
    )

    def one_run(variables, feed_data, inputs, seed):
        def body(total, i):
            images = feed.batch(feed_data, inputs, seed, i)["image"]
            stats = model.apply(variables, images, train=True, mutable=["batch_stats"])[1]["batch_stats"]
            return jax.tree.map(jnp.add, total, stats), None

        zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
        return jax.lax.scan(body, zeros, jnp.arange(per_dispatch))[0]  # forward passes only: no XLA:CPU slowdown

    run = jax.jit(
        over_runs(one_run, config.runs, (0, None, feed.inputs_run_axes, 0), config.multi_run),
        out_shardings=replicated(mesh),
    )
    first = config.seed + 1
    seeds = np.int32(first) if config.runs == 1 else np.arange(first, first + config.runs, dtype=np.int32)
    total = None
    try:
        for dispatch in range(batches // per_dispatch):
            sums = run(state.variables(), feed.data, feed.inputs(dispatch * per_dispatch), seeds)
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    finally:
        feed.close()
    return jax.tree.map(lambda x: x / batches, total)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """Trains `config` in `workdir` (resuming from its newest good checkpoint); returns the final result (also in
    result.json), or None if the run was preempted (SIGTERM) and saved."""
    # ---------------------------------------------------------------- set-up
    validate(config)
    run_dir = RunDir(workdir).create()
    mesh = make_mesh()
    check_divisible(config.batch_size, mesh, "config.batch_size")
    ensure_dataset(config)
    runs, k = config.runs, config.steps_per_dispatch
    model = model_from_config(config.model)
    optimizer = make_optimizer(**config.optimizer)
    schedules = [make_schedule(config) for _ in range(runs)]
    state = create_train_state(model, optimizer, input_shape(config.model.name), config.seed, mesh, runs)
    feed = make_feed(config.data, mesh, batch_size=config.batch_size, steps=k, seed=config.seed, runs=runs)
    checkpointer = Checkpointer(run_dir, model_signature(config, state.params), keep=config.keep_checkpoints)
    restored = checkpointer.restore(state)
    if restored is not None:
        state = restored.state
        feed.set_state(restored.data_state)
        for schedule, schedule_state in zip(
            schedules, restored.schedule_state if runs > 1 else [restored.schedule_state], strict=True
        ):
            schedule.load_state_dict(schedule_state)
        logging.info("Resumed %s at step %d.", workdir, restored.step)
    step = restored.step if restored is not None else 0
    members = [run_dir] if runs == 1 else [run_dir.member(config.seed + i) for i in range(runs)]
    if multihost.is_main():
        run_dir.write_config(config)
        for member in members:
            member.path.mkdir(exist_ok=True)
    writer = MetricWriter(members, config.num_steps, step)
    dispatch = make_dispatch(model, optimizer, mesh, feed, k, runs, config.loss_scale, config.multi_run)
    evaluator = Evaluator.for_config(config, model, mesh)
    all_finite = jax.jit(lambda t: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(t)])))
    seeds = np.int32(config.seed) if runs == 1 else np.arange(config.seed, config.seed + runs, dtype=np.int32)
    preemption = _Preemption()
    window: dict[str, Any] = {"sums": None, "start": time.perf_counter(), "from": step}
    last_evaluation: tuple[int, list[EvalResult]] | None = None

    def check_feed() -> None:
        """Every process stops together if one's input pipeline failed for good (see `feeds.HostFeed`)."""
        failure = getattr(feed, "failure", None)
        failing = multihost.first_failing_process(failure is not None)
        if failing is not None:
            raise InputPipelineError(
                f"Process {failing}'s training input pipeline failed for good"
                + (f": {failure}" if failure else "; see its log.")
                + " The checkpoints are "
                f"intact; rerun the same command once the cause is fixed: it resumes from "
                f"step {checkpointer.latest_step}."
            )

    def log(learning_rates: np.ndarray) -> None:
        check_feed()
        totals = _per_member(window["sums"])
        seconds = time.perf_counter() - window["start"]
        records = []
        for schedule, total, lr in zip(schedules, totals, learning_rates, strict=True):
            loss, error = total["loss"] / total["examples"], total["errors"] / total["examples"]
            if not np.isfinite(loss):
                raise NonFiniteLossError(
                    f"The training loss became {loss} between steps {window['from']} and {step}. The last good "
                    f"checkpoint (step {checkpointer.latest_step}) is kept; lower config.schedule.base_lr, check the "
                    "data, or use float32 (config.model.dtype)."
                )
            schedule.observe(step, train_error=error)
            records.append(
                {
                    "loss": loss,
                    "error": error,
                    "learning_rate": float(lr),
                    "images_per_sec": total["examples"] / seconds,
                }
            )
        writer.write(step, "train", records)
        writer.progress(
            step,
            float(np.mean([r["loss"] for r in records])),
            float(np.mean([r["error"] for r in records])),
            float(np.mean(learning_rates)),
            sum(t["examples"] for t in totals) / seconds,
        )
        window.update(sums=None, start=time.perf_counter(), **{"from": step})

    def evaluate(current: Evaluator, variables: Any) -> list[EvalResult]:
        results = _as_list(current(variables))
        writer.write(
            step, "eval" if current is evaluator else f"eval_{current.protocol}", [r.to_dict() for r in results]
        )
        logging.info("step %d  %s", step, describe_summary(summarize(results), config.model.name))
        return results

    def save() -> None:
        check_feed()
        if not bool(all_finite(state.params)):
            raise NonFiniteLossError(
                f"The parameters became NaN or Inf by step {step}; the last good checkpoint "
                f"(step {checkpointer.latest_step}) is kept."
            )
        schedule_states = [s.state_dict() for s in schedules]
        checkpointer.save(step, state, feed.get_state(), schedule_states if runs > 1 else schedule_states[0])

    learning_rates = np.zeros((runs, k), np.float32)
    try:
        # ------------------------------------------------------------ loop
        while step < config.num_steps:
            learning_rates = np.array([[s(step + i) for i in range(k)] for s in schedules], np.float32)
            state, sums = dispatch(
                state, feed.data, feed.inputs(step), seeds, learning_rates[0] if runs == 1 else learning_rates
            )
            window["sums"] = sums if window["sums"] is None else jax.tree.map(jnp.add, window["sums"], sums)
            step += k
            if step % config.log_every_steps == 0:
                log(learning_rates[:, -1])
            if step % config.eval.every_steps == 0:
                last_evaluation = (step, evaluate(evaluator, state.variables()))
                for schedule, result in zip(schedules, last_evaluation[1], strict=True):
                    schedule.observe(step, val_error=result.top1_error)
            preempted = preemption.event.is_set() or checkpointer.reached_preemption(step)
            if step % config.checkpoint_every_steps == 0 or preempted:
                save()
            if preempted:
                checkpointer.wait()
                logging.info("Preempted: saved step %d to %s; rerun the same command to resume.", step, workdir)
                return None

        # ------------------------------------------------------------- end
        if window["sums"] is not None:
            log(learning_rates[:, -1])
        if checkpointer.latest_step != step:
            save()
        checkpointer.wait()
        final_evaluator = evaluator
        if config.eval.final_protocol not in (None, config.eval.protocol):
            final_evaluator = Evaluator.for_config(config, model, mesh, protocol=config.eval.final_protocol)
        recompute = config.bn_statistics == "recomputed"
        if recompute:
            state = state.replace(batch_stats=recompute_batch_stats(config, state, mesh))
        if (
            final_evaluator is evaluator
            and not recompute
            and last_evaluation is not None
            and last_evaluation[0] == step
        ):
            results = last_evaluation[1]  # the periodic evaluation of this very state
        else:
            results = evaluate(final_evaluator, state.variables())
    finally:
        # However the run ends, a save in flight completes and the workers and event files are closed.
        try:
            checkpointer.close()
        finally:
            writer.close()
            feed.close()

    result = {
        **summarize(results),
        "model": config.model.name,
        "parameters": sum(x.size for x in jax.tree.leaves(state.params)) // runs,
        "bn_statistics": (
            f"recomputed over {config.bn_recompute_examples} training images" if recompute else "moving averages"
        ),
    }
    if multihost.is_main():
        for member, member_result in zip(members, results, strict=True):
            if member is not run_dir:
                member.write_result({**member_result.to_dict(), "seed": int(member.name.removeprefix("seed"))})
            plot_training_curves(
                [member], [config.model.name], member.curves, title=f"{config.model.name} on {config.data.name}"
            )
        run_dir.write_result(result)
    return result
