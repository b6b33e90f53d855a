"""Training and evaluation of a run, resumable, preemption-safe and self-healing.

`Trainer(config, workdir).run()` (or `train_and_evaluate(config, workdir)`) is the whole job behind
`python -m resnet_jax.main`, and reads top to bottom:

  set-up   `__init__`: the dataset opened once, the model, the members' state and schedules, the feed, the newest
           checkpoint that restores, the jitted dispatch and evaluation step (built once);
  loop     `run`: one dispatch of `steps_per_dispatch` steps, then the periodic actions: log, evaluate, checkpoint,
           and stop on preemption (SIGTERM), saving first;
  end      `_finish`: the last log, BN statistics recomputed if asked, the final evaluation, result.json and the
           curves.

A run trains its members (`config.runs` seeds, `resnet_jax.recipe.members`) in the same program and reports each of
them and their mean. Metrics stay on the device between logs, so the host never waits inside the loop.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax import models
from resnet_jax.core import multihost
from resnet_jax.core.errors import ConfigError, NonFiniteLossError
from resnet_jax.core.sharding import make_mesh
from resnet_jax.data.feeds import make_feed
from resnet_jax.data.prepare import ensure_prepared
from resnet_jax.eval.evaluator import make_evaluator
from resnet_jax.eval.results import EvalResult, describe_summary, summarize
from resnet_jax.recipe.changes import check_dispatch, check_resume
from resnet_jax.recipe.config import device_count_problem, model_from_config, validate
from resnet_jax.recipe.members import Members
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.recipe.schedules import make_schedule
from resnet_jax.run.checkpoints import Checkpointer, model_signature
from resnet_jax.run.metrics import MetricWriter
from resnet_jax.run.plots import plot_training_curves
from resnet_jax.run.rundir import RunDir
from resnet_jax.run.state import create_train_state, start_from_weights
from resnet_jax.train.bn_stats import recompute_batch_stats
from resnet_jax.train.step import make_dispatch


class _Preemption:
    """Turns SIGTERM (how Cloud TPU and most schedulers preempt) and a first Ctrl-C into a flag the loop checks: the
    run saves at the end of the dispatch and stops, to be resumed by the same command. A second Ctrl-C stops at once
    (KeyboardInterrupt), losing what the newest checkpoint does not hold. `close` puts the previous handlers back."""

    def __init__(self):
        self.event = threading.Event()
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)

    def _interrupt(self, *_) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        logging.warning("Ctrl-C: the run saves at the end of this dispatch and stops; Ctrl-C again stops at once.")

    def close(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _per_member(tree: Any) -> list[dict[str, float]]:
    """Device metric sums ([members] arrays) as one dict of floats per member."""
    arrays = {k: np.asarray(v, np.float64).reshape(-1) for k, v in tree.items()}
    return [{k: float(v[i]) for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))]


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


_NAN_ADVICE = (
    "Lower config.schedule.base_lr (the same command with --accept_changes=schedule.base_lr resumes with it), check "
    "the data, or train in float32 (config.model.dtype) in a new --workdir."
)


class Trainer:
    """One run of `config` in `workdir`, set up once (resuming from the newest good checkpoint); `run()` trains it.

    A run that resumes must be given its own config, but for the keys that do not change what it computes
    (`recipe/changes.py`) and those named in `accept_changes`; the changes are recorded in its resumes.jsonl.
    `deadline` (a `time.time()`) stops the run at the first dispatch that ends after it, saved, as a preemption does:
    a lease's runs end before the lease (experiments/lease.py). `input_hook`, if given, wraps each fresh training input
    iterator under the self-healing one (`pipeline.train_iterator`'s `wrap`): the recovery tests inject their faults
    there. `timings` holds the seconds of set-up, of the first dispatch (compilation included) and of the loop.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        *,
        accept_changes: Sequence[str] = (),
        deadline: float | None = None,
        input_hook: Callable[[Any], Any] | None = None,
    ):
        # ------------------------------------------------------------ set-up
        started = time.perf_counter()
        validate(config)
        self.deadline = deadline
        self.config, self.workdir = config, workdir
        self.run_dir = RunDir(workdir).create()
        changes = None  # the config changes of a resume, checked before any work
        saved = self.run_dir.saved_steps()
        if saved and self.run_dir.config_path.exists():
            changes = check_resume(self.run_dir.read_config(), config, saved[-1], accept_changes, workdir)
        self.mesh = make_mesh()
        problem = device_count_problem(config, self.mesh.size)
        if problem:
            raise ConfigError(problem)
        self.members = members = Members.from_config(config)
        self.dataset = ensure_prepared(config.data, config.prepare_from)
        self.model = model_from_config(config.model)
        optimizer = make_optimizer(**config.optimizer)
        self.schedules = [make_schedule(config.schedule) for _ in range(members.count)]
        state = create_train_state(
            self.model, optimizer, models.spec(config.model.name).input_shape, members, self.mesh
        )
        self.feed = self.checkpointer = self.writer = self.preemption = None  # opened below; closed by close()
        try:  # a set-up that fails closes what it opened (input workers, orbax's threads, event files) at once
            k = config.steps_per_dispatch
            self.feed = make_feed(
                self.dataset,
                config.data,
                self.mesh,
                batch_size=config.batch_size,
                steps=k,
                seeds=members.seeds,
                wrap=input_hook,
            )
            signature = model_signature(config.model, members, state.params)
            self.checkpointer = Checkpointer(self.run_dir, members, signature, keep=config.keep_checkpoints)
            restored = self.checkpointer.restore(state)
            self.step = 0
            if restored is not None:
                check_dispatch(restored.step, k, workdir)  # the step restored: an older one if the newest is damaged
                state, self.step = restored.state, restored.step
                self.feed.set_state(restored.data_state)
                for schedule, schedule_state in zip(self.schedules, restored.schedule_states, strict=True):
                    schedule.load_state_dict(schedule_state)
                logging.info("Resumed %s at step %d.", workdir, restored.step)
            elif config.init_from is not None:
                state = start_from_weights(state, config.init_from, config.model.num_classes, members, self.mesh)
                logging.info("Starting from the published weights %s.", config.init_from)
            self.state = state
            self.member_dirs = self.run_dir.members(members)
            if multihost.is_main():
                if restored is None or changes is None:  # a run starting afresh (or one resumed without its config)
                    self.run_dir.start(config)
                else:
                    self.run_dir.record_resume(restored.step, changes, sorted(set(accept_changes) & set(changes)))
                self.run_dir.record_machine(0 if restored is None else restored.step)
                for member in self.member_dirs:
                    member.path.mkdir(exist_ok=True)
            self.writer = MetricWriter(self.member_dirs, config.num_steps, self.step)
            self.dispatch = make_dispatch(
                self.model, optimizer, self.mesh, self.feed, k, members, config.loss_scale, config.dispatch_loop
            )
            self.evaluator = make_evaluator(config, self.model, self.dataset, self.mesh, members)
            self.preemption = _Preemption()
            self.window: dict[str, Any] = {"sums": None, "start": time.perf_counter(), "from": self.step}
            self.last_evaluation: tuple[int, list[EvalResult]] | None = None
            self.learning_rates = np.zeros((members.count, k), np.float32)
            self.timings = {"setup_s": time.perf_counter() - started, "first_dispatch_s": None, "loop_s": 0.0}
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- loop
    def run(self) -> dict[str, Any] | None:
        """Trains to `config.num_steps`; returns the final result (also in result.json), or None if the run was
        preempted (SIGTERM) and saved."""
        config, k = self.config, self.config.steps_per_dispatch
        loop_started = time.perf_counter()
        try:
            while self.step < config.num_steps:
                self.learning_rates = np.array(
                    [[s(self.step + i) for i in range(k)] for s in self.schedules], np.float32
                )
                self.state, sums = self.dispatch(
                    self.state, self.feed.data, self.feed.inputs(self.step), self.members.seeds, self.learning_rates
                )
                if self.timings["first_dispatch_s"] is None:  # waits once, for the compilation's cost
                    jax.block_until_ready(sums)
                    self.timings["first_dispatch_s"] = time.perf_counter() - loop_started
                self.window["sums"] = (
                    sums if self.window["sums"] is None else jax.tree.map(jnp.add, self.window["sums"], sums)
                )
                self.step += k
                if self.step % config.log_every_steps == 0:
                    self._log()
                if self.step % config.eval.every_steps == 0:
                    self.last_evaluation = (self.step, self._evaluate(self.evaluator))
                    for schedule, result in zip(self.schedules, self.last_evaluation[1], strict=True):
                        schedule.observe(self.step, val_error=result.top1_error)
                preempted = (
                    self.preemption.event.is_set()
                    or self.checkpointer.reached_preemption(self.step)
                    or self._past_deadline()
                )
                if self.step % config.checkpoint_every_steps == 0 or preempted:
                    self._save()
                if preempted:
                    self.checkpointer.wait()
                    logging.info(
                        "Preempted: saved step %d to %s; rerun the same command to resume.", self.step, self.workdir
                    )
                    return None
            self.timings["loop_s"] = time.perf_counter() - loop_started
            results = self._finish()
        finally:
            self.close()
        return self._write_results(results)

    def close(self) -> None:
        """However the run ends (or its set-up fails): a save in flight completes, the signal handlers are restored,
        and the input workers and event files are closed; each of them whatever the others raise."""
        with contextlib.ExitStack() as closing:
            for opened in (self.feed, self.writer, self.checkpointer, self.preemption):  # closed in reverse order
                if opened is not None:
                    closing.callback(opened.close)

    # ---------------------------------------------------------------- periodic actions
    def _past_deadline(self) -> bool:
        """Whether the deadline has passed, on every process alike (each asks its own clock; any one decides)."""
        if self.deadline is None:
            return False
        return multihost.first_failing_process(time.time() >= self.deadline) is not None

    def _check_inputs(self) -> None:
        """Every process stops together if one's input pipeline failed for good (see `feeds.HostFeed`)."""
        self.feed.stop_together_if_failed(
            " The checkpoints are intact; rerun the same command once the cause is fixed: it resumes from "
            f"{self.checkpointer.resume_point()}."
        )

    def _log(self) -> None:
        self._check_inputs()
        totals = _per_member(self.window["sums"])
        seconds = time.perf_counter() - self.window["start"]
        records = []
        for schedule, total, lr in zip(self.schedules, totals, self.learning_rates[:, -1], strict=True):
            loss, error = total["loss"] / total["examples"], total["errors"] / total["examples"]
            if not np.isfinite(loss):
                raise NonFiniteLossError(
                    f"The training loss became {loss} between steps {self.window['from']} and {self.step}. The last "
                    f"good checkpoints are kept (a rerun resumes from {self.checkpointer.resume_point()}). "
                    + _NAN_ADVICE
                )
            schedule.observe(self.step, train_error=error)
            records.append(
                {
                    "loss": loss,
                    "error": error,
                    "learning_rate": float(lr),
                    "images_per_sec": total["examples"] / seconds,
                }
            )
        self.writer.write(self.step, "train", records)
        self.writer.progress(
            self.step,
            float(np.mean([r["loss"] for r in records])),
            float(np.mean([r["error"] for r in records])),
            float(np.mean(self.learning_rates[:, -1])),
            sum(t["examples"] for t in totals) / seconds,
        )
        self.window.update(sums=None, start=time.perf_counter(), **{"from": self.step})

    def _evaluate(self, evaluator: Any, stop: Callable[[], bool] = lambda: False) -> list[EvalResult]:
        results = evaluator(self.state.variables(), stop)
        kind = "eval" if evaluator is self.evaluator else f"eval_{evaluator.protocol}"
        self.writer.write(self.step, kind, [r.to_dict() for r in results])
        logging.info("step %d  %s", self.step, describe_summary(summarize(results), self.config.model.name))
        return results

    def _save(self) -> None:
        self._check_inputs()
        if not bool(_all_finite(self.state.params)):
            raise NonFiniteLossError(
                f"The parameters became NaN or Inf by step {self.step}; the last good checkpoints are kept (a rerun "
                f"resumes from {self.checkpointer.resume_point()}). " + _NAN_ADVICE
            )
        schedule_states = [s.state_dict() for s in self.schedules]
        self.checkpointer.save(self.step, self.state, self.feed.get_state(), schedule_states)

    # ---------------------------------------------------------------- end
    def _finish(self) -> list[EvalResult]:
        """The last log and save, BN statistics recomputed if asked, and the final evaluation of every member."""
        config = self.config
        if self.window["sums"] is not None:
            self._log()
        if self.checkpointer.latest_step != self.step:
            self._save()
        self.checkpointer.wait()
        final_evaluator = self.evaluator
        if config.eval.final_protocol not in (None, config.eval.protocol):
            final_evaluator = make_evaluator(
                config, self.model, self.dataset, self.mesh, self.members, protocol=config.eval.final_protocol
            )
        recompute = config.bn_statistics == "recomputed"
        if recompute:
            batch_stats = recompute_batch_stats(
                config, self.dataset, self.state, self.members, self.mesh, stop=self.preemption.event.is_set
            )
            self.state = self.state.replace(batch_stats=batch_stats)
            if multihost.is_main():  # what `load_run` (and `resnet_jax.evaluate`) gives for this step
                self.run_dir.write_bn_statistics(self.step, batch_stats)
        same_state_evaluated = self.last_evaluation is not None and self.last_evaluation[0] == self.step
        if final_evaluator is self.evaluator and not recompute and same_state_evaluated:
            return self.last_evaluation[1]  # the periodic evaluation of this very state
        return self._evaluate(final_evaluator, stop=self.preemption.event.is_set)  # saved: the rerun evaluates

    def _write_results(self, results: list[EvalResult]) -> dict[str, Any]:
        """result.json of every member (with its seed) and of the run (their summary), and each member's curves."""
        config = self.config
        result = {
            **summarize(results),
            "model": config.model.name,
            "parameters": sum(x[0].size for x in jax.tree.leaves(self.state.params)),
            "num_steps": config.num_steps,
            "schedule_fraction": config.schedule_fraction,
            "eval_batch_size": self.evaluator.batch_size,  # the config's, fitted to the device count
            "bn_statistics": (
                f"recomputed over {config.bn_recompute_examples} training images"
                if config.bn_statistics == "recomputed"
                else "moving averages"
            ),
        }
        resumes = [{"step": r["step"], "changes": r["changes"]} for r in self.run_dir.resumes() if r["changes"]]
        if resumes:
            result["config_changes"] = resumes  # the run's config is config.json with these (resumes.jsonl)
        result["machines"] = self.run_dir.machines()  # where each stretch of it computed (machines.jsonl)
        if multihost.is_main():
            # A single run's member directory is the run's own: its result.json is then the run's, written last.
            for member, seed, member_result in zip(self.member_dirs, self.members.seeds, results, strict=True):
                member.write_result({**member_result.to_dict(), "seed": int(seed)})
                plot_training_curves(
                    [member], [config.model.name], member.curves, title=f"{config.model.name} on {config.data.name}"
                )
            self.run_dir.write_result(result)
        return result


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    accept_changes: Sequence[str] = (),
    deadline: float | None = None,
    input_hook: Callable[[Any], Any] | None = None,
) -> dict[str, Any] | None:
    """Trains `config` in `workdir` (resuming from its newest good checkpoint); returns the final result (also in
    result.json), or None if the run was preempted (SIGTERM) or reached its deadline, and saved."""
    trainer = Trainer(config, workdir, accept_changes=accept_changes, deadline=deadline, input_hook=input_hook)
    return trainer.run()
