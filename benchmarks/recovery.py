"""What the faults a run heals by itself cost, in seconds, on the quick CIFAR config fed by grain.

    python -m benchmarks.recovery --data_dir=workdirs/tfds [--steps=50]

Runs `configs/cifar10.py:resnet20,quick` for --steps steps on the grain pipeline (2 worker processes, a checkpoint
every half of the run) several times in one process: uninterrupted; with an OSError injected into the training
pipeline; with a grain worker killed with SIGKILL; and resumed after its newest checkpoint was truncated. For the
two pipeline faults it reports the pipeline's own recovery time (from the fault to the next batch) and the run's
wall time against the uninterrupted one; for the damaged checkpoint, the resumed run's wall time against a resume
from an intact checkpoint (the difference is the steps redone and the failed restore). Each run ends with the same
parameters as the uninterrupted one (tests/test_recovery.py proves it; here it is checked again). One JSON line per
figure.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import psutil
from absl import app, flags, logging

from configs import cifar10
from resnet_jax.core.machine import describe
from resnet_jax.run.rundir import RunDir
from resnet_jax.train.loop import Trainer
from tests.support.faults import FlakyInput

flags.DEFINE_string("data_dir", None, "tfds data directory holding the prepared cifar10.", required=True)
flags.DEFINE_integer("steps", 50, "Training steps per run (even).")
FLAGS = flags.FLAGS


def _config():
    config = cifar10.get_config("resnet20,quick")
    config.data.data_dir, config.data.on_device, config.data.worker_count = FLAGS.data_dir, False, 2
    config.num_steps, config.steps_per_dispatch, config.log_every_steps = FLAGS.steps, 1, 5
    config.checkpoint_every_steps = config.eval.every_steps = FLAGS.steps // 2
    return config


def _params(workdir: Path) -> list[np.ndarray]:
    state = ocp.PyTreeCheckpointer().restore(RunDir(workdir).checkpoint(FLAGS.steps) / "state")
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def _run(workdir: Path, input_hook=None) -> tuple[float, list[dict]]:
    """(wall seconds, the input pipeline's recoveries) of one run of the config in `workdir`."""
    start = time.perf_counter()
    trainer = Trainer(_config(), str(workdir), input_hook=input_hook)
    trainer.run()
    return time.perf_counter() - start, trainer.feed.recoveries


def main(argv):
    del argv
    machine = describe()
    work = Path(tempfile.mkdtemp())
    figures = []
    reference_seconds, _ = _run(work / "uninterrupted")
    reference = _params(work / "uninterrupted")

    def record(name: str, seconds: float, workdir: Path, baseline: float, **extra):
        same = all(np.array_equal(a, b) for a, b in zip(_params(workdir), reference, strict=True))
        figures.append(
            {
                "name": f"recovery/{name}",
                "wall_sec": seconds,
                "baseline_wall_sec": baseline,
                "extra_sec": seconds - baseline,
                "bit_identical": same,
                **extra,
                **machine,
            }
        )
        print(json.dumps(figures[-1]), flush=True)

    # An OSError in the middle of the run.
    flaky = FlakyInput(FLAGS.steps // 2 + 3, OSError(errno.EBADF, "Bad file descriptor (injected)"))
    seconds, recoveries = _run(work / "oserror", flaky)
    record("oserror", seconds, work / "oserror", reference_seconds, recoveries=recoveries)

    # A grain worker killed once the run has logged a fifth of its steps.
    def kill_a_worker(workdir: Path):
        while not RunDir(workdir).metrics_path.exists() or len(RunDir(workdir).read_metrics()) < FLAGS.steps // 25:
            time.sleep(0.05)
        for child in psutil.Process().children(recursive=True):
            if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline()):
                os.kill(child.pid, signal.SIGKILL)
                logging.info("Killed grain worker %d.", child.pid)
                return

    killer = threading.Thread(target=kill_a_worker, args=(work / "killed",))
    killer.start()
    seconds, recoveries = _run(work / "killed")
    killer.join()
    record("worker_killed", seconds, work / "killed", reference_seconds, recoveries=recoveries)

    # The newest checkpoint truncated: the resume falls back to the one before. Baseline: the same resume intact.
    for name in ("intact", "truncated"):
        shutil.copytree(work / "uninterrupted", work / name)
        RunDir(work / name).result_path.unlink()
        newest = Path(RunDir(work / name).checkpoint(FLAGS.steps))
        if name == "truncated":
            for path in newest.rglob("*"):
                if path.is_file() and path.stat().st_size > 100:
                    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:  # resume from the middle checkpoint, as the truncated run will, by removing the newest
            shutil.rmtree(newest)
    intact, _ = _run(work / "intact")
    truncated, _ = _run(work / "truncated")
    # Both redo the steps after the middle checkpoint; the truncated one also tries, fails and moves aside the newest.
    record(
        "newest_checkpoint_truncated",
        truncated,
        work / "truncated",
        intact,
        steps_redone=FLAGS.steps - FLAGS.steps // 2,
        uninterrupted_wall_sec=reference_seconds,
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
