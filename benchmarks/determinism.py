"""Whether a CPU run is deterministic end to end, in float32 and bfloat16: the quick start twice, and killed with
SIGKILL mid-run then resumed, each against an uninterrupted run, bit for bit.

    python -m benchmarks.determinism --data_dir=DIR [--dtypes=float32,bfloat16] [--steps=100] [--kill_at_s=5]

Each run is `python -m resnet_jax.main --config=configs/cifar10.py:resnet20,quick` as a user starts it (a process of
its own, oneDNN's convolutions where 'auto' picks them), shortened to `--steps` iterations with a checkpoint every
tenth of them. Per dtype: run A uninterrupted; run B the same command again; run C killed with SIGKILL `--kill_at_s`
seconds after its first checkpoint is on disk, then resumed by the same command. B and C must end with A's final test
error and A's parameters, BN statistics and optimizer state, bit for bit. One JSON line per dtype and the machine;
exit status 1 if any differs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from resnet_jax.core.machine import describe
from resnet_jax.run.rundir import RunDir
from tests.support.training import checkpoint_leaves

flags.DEFINE_string("data_dir", None, "tfds data directory holding the prepared cifar10.", required=True)
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to check.")
flags.DEFINE_integer("steps", 100, "Iterations of each run (a checkpoint every tenth).")
flags.DEFINE_float("kill_at_s", 5.0, "Seconds after its first checkpoint at which run C is killed.")
FLAGS = flags.FLAGS
REPO = Path(__file__).resolve().parents[1]


def _command(workdir: Path, dtype: str) -> list[str]:
    every = max(FLAGS.steps // 10, 1)
    return [
        sys.executable, "-m", "resnet_jax.main", "--config=configs/cifar10.py:resnet20,quick", f"--workdir={workdir}",
        f"--config.data.data_dir={FLAGS.data_dir}", f"--config.model.dtype={dtype}",
        f"--config.num_steps={FLAGS.steps}",
        f"--config.checkpoint_every_steps={every}", f"--config.log_every_steps={every}",
        f"--config.steps_per_dispatch={every}", f"--config.eval.every_steps={FLAGS.steps}",
    ]  # fmt: skip


def _run(workdir: Path, dtype: str) -> float:
    started = time.perf_counter()
    subprocess.run(_command(workdir, dtype), cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def _killed_and_resumed(workdir: Path, dtype: str) -> int:
    """Starts the run, SIGKILLs it `kill_at_s` after its first checkpoint is on disk, resumes it; returns the step it
    resumed from."""
    process = subprocess.Popen(_command(workdir, dtype), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = RunDir(workdir)
    while not (run.metrics_path.exists() and run.saved_steps()):
        if process.poll() is not None:
            raise RuntimeError(f"run C ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    time.sleep(FLAGS.kill_at_s)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    if run.is_finished():
        raise RuntimeError(f"run C finished before the kill: lower --kill_at_s ({FLAGS.kill_at_s}) or raise --steps")
    resumed_from = run.saved_steps()[-1]
    subprocess.run(_command(workdir, dtype), cwd=REPO, check=True, capture_output=True)
    return resumed_from


def _same(a: Path, b: Path) -> bool:
    first, second = checkpoint_leaves(a, FLAGS.steps), checkpoint_leaves(b, FLAGS.steps)  # every array, fixed order
    same_state = len(first) == len(second) and all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
    return same_state and RunDir(a).read_result()["top1_error"] == RunDir(b).read_result()["top1_error"]


def main(argv: list[str]) -> None:
    del argv
    all_same = True
    with tempfile.TemporaryDirectory() as scratch:
        for dtype in FLAGS.dtypes:
            a, b, c = (Path(scratch) / f"{dtype}_{name}" for name in "abc")
            seconds = _run(a, dtype)
            _run(b, dtype)
            resumed_from = _killed_and_resumed(c, dtype)
            rerun, resumed = _same(a, b), _same(a, c)
            all_same &= rerun and resumed
            print(
                json.dumps(
                    {
                        "dtype": dtype,
                        "steps": FLAGS.steps,
                        "run_s": round(seconds, 1),
                        "top1_error": RunDir(a).read_result()["top1_error"],
                        "rerun_bit_identical": rerun,
                        "killed_at_step_resumed_from": resumed_from,
                        "resumed_bit_identical": resumed,
                        **describe(),
                    }
                ),
                flush=True,
            )
    sys.exit(0 if all_same else 1)


if __name__ == "__main__":
    app.run(main)
