"""The CIFAR-10 training loop against its bare step, one run and many runs in one program, and what Table 6 costs.

    python -m benchmarks.cifar_loop --data_dir=DIR --nets=resnet20,resnet56,resnet110 --runs=1,5 --steps=4000
    python -m benchmarks.cifar_loop --data_dir=DIR --nets=resnet20 --runs=1 --steps=100 --grain   # CPU comparison

For each net and number of runs it reports:
  bare       images/s of one jitted SGD step on a batch already on the device (benchmarks/train_step.py's figure);
  loop       images/s of the real training loop (`resnet_jax.train.loop.train_and_evaluate` on the paper's config,
             data on the devices, `--steps_per_dispatch` steps per call), evaluations on the 10,000 test images and
             checkpoints included: the median of its logged windows after the first (which holds the compilation);
  loop/bare  the share of the bare step's speed the loop keeps (runs count: N runs of 128 images per step);
  schedule   the wall time the paper's 64k-iteration schedule would take at that speed.
With --grain the same loop also runs on the grain pipeline (`data.on_device=False`) for comparison. The last lines
project the device time of the whole study (Table 6 and Figure 6: ResNet-20..110 and plain-20..110, `--study_runs`
each, 5 for ResNet-110) from the measured per-image times, interpolated in depth.
Prints one JSON line per measurement and a Markdown table; needs the prepared CIFAR-10 (`--data_dir`).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

import numpy as np
from absl import flags, logging

from benchmarks.bare_step import time_train_step
from configs import cifar10
from resnet_jax import models
from resnet_jax.core import cli
from resnet_jax.core.machine import describe
from resnet_jax.recipe.config import model_from_config
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.rundir import RunDir
from resnet_jax.train.loop import train_and_evaluate

flags.DEFINE_string("data_dir", None, "tfds data directory holding the prepared cifar10.", required=True)
flags.DEFINE_list("nets", ["resnet20", "resnet56"], "CIFAR nets to measure.")
flags.DEFINE_list("runs", ["1"], "Numbers of runs trained together to measure.")
flags.DEFINE_integer("steps", 2000, "Training steps per measured loop (evaluated twice, checkpointed once).")
flags.DEFINE_integer("steps_per_dispatch", 100, "Steps per call into the devices.")
flags.DEFINE_integer("bare_steps", 200, "Timed steps of the bare step.")
flags.DEFINE_bool("grain", False, "Also measure the loop fed by the grain pipeline.")
flags.DEFINE_integer("worker_count", 2, "grain worker processes, with --grain.")
flags.DEFINE_integer("study_runs", 3, "Runs per net in the projected study (ResNet-110: at least 5).")
FLAGS = flags.FLAGS

_PAPER = cifar10.get_config()
SCHEDULE_IMAGES = _PAPER.num_steps * _PAPER.batch_size  # the paper's schedule: 64k iterations of 128


def bare_images_per_sec(net: str) -> float:
    config = cifar10.get_config(net)
    model, optimizer = model_from_config(config.model), make_optimizer(**config.optimizer)
    seconds, _ = time_train_step(
        model, optimizer, models.spec(net).input_shape, 10, config.batch_size, FLAGS.bare_steps
    )
    return config.batch_size / seconds


def loop(net: str, runs: int, on_device: bool) -> dict:
    config = cifar10.get_config(net)
    config.data.data_dir, config.data.on_device, config.data.worker_count = (
        FLAGS.data_dir,
        on_device,
        FLAGS.worker_count,
    )
    config.runs, config.num_steps = runs, FLAGS.steps
    config.steps_per_dispatch = FLAGS.steps_per_dispatch if on_device else 1
    config.log_every_steps = FLAGS.steps_per_dispatch
    config.eval.every_steps = config.checkpoint_every_steps = FLAGS.steps // 2
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        train_and_evaluate(config, workdir)
        wall = time.perf_counter() - start
        members = RunDir(workdir).members()
        windows = [r["images_per_sec"] for r in members[0].read_metrics() if r["kind"] == "train"][1:]
    return {"loop_images_per_sec": runs * statistics.median(windows), "wall_sec": wall}


def project(measured: dict[tuple[int, int], float]) -> dict[str, float]:
    """Device seconds of the study, per net, from measured seconds per image per run at (depth, runs)."""
    depths = sorted({d for d, _ in measured})
    seconds = {}
    for net in cifar10.DEPTH_STUDY:
        depth = int(net.removeprefix("plain").removeprefix("resnet"))
        runs = max(FLAGS.study_runs, 5) if net == "resnet110" else FLAGS.study_runs
        measured_runs = min({r for _, r in measured}, key=lambda r: abs(r - runs))
        per_image = np.interp(depth, depths, [measured[(d, measured_runs)] for d in depths])
        seconds[net] = SCHEDULE_IMAGES * runs * per_image
    return seconds


def main(argv: list[str]) -> None:
    del argv
    cli.initialize()
    machine = describe()
    rows, measured = [], {}
    for net in FLAGS.nets:
        bare = bare_images_per_sec(net)
        for runs in (int(r) for r in FLAGS.runs):
            for on_device in (True, False) if FLAGS.grain else (True,):
                if runs > 1 and not on_device:
                    continue
                figures = loop(net, runs, on_device)
                row = {
                    "name": f"cifar_loop/{net}/runs{runs}/{'device' if on_device else 'grain'}",
                    "bare_images_per_sec": bare,
                    **figures,
                    "loop_over_bare": figures["loop_images_per_sec"] / bare,
                    "schedule_sec": SCHEDULE_IMAGES * runs / figures["loop_images_per_sec"],
                    "steps_per_dispatch": FLAGS.steps_per_dispatch if on_device else 1,
                    **machine,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                if on_device:
                    measured[(int(net.removeprefix("resnet").removeprefix("plain")), runs)] = (
                        runs / figures["loop_images_per_sec"]
                    )
    print("\n| net | runs | feed | bare img/s | loop img/s | loop/bare | 64k schedule |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for row in rows:
        _, net, runs, feed = row["name"].split("/")
        print(
            f"| {net} | {runs.removeprefix('runs')} | {feed} | {row['bare_images_per_sec']:,.0f} | "
            f"{row['loop_images_per_sec']:,.0f} | {row['loop_over_bare']:.2f} | {row['schedule_sec'] / 60:.1f} min |"
        )
    if measured:
        seconds = project(measured)
        print(
            json.dumps(
                {
                    "name": "cifar_loop/study_projection",
                    "study_runs": FLAGS.study_runs,
                    "per_net_minutes": {n: round(s / 60, 1) for n, s in seconds.items()},
                    "total_minutes": round(sum(seconds.values()) / 60, 1),
                    **machine,
                }
            )
        )
        logging.info("Projected device time of the study: %.1f minutes.", sum(seconds.values()) / 60)


if __name__ == "__main__":
    cli.define_distributed_flags()
    cli.run(main)
