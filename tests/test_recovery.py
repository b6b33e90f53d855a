"""Faults a run heals by itself, each ending bit-identical to an uninterrupted run; faults that stop every process
together; and user errors that read as one line.

The fault-injection runs use the grain pipeline with one worker process (the on-device CIFAR path has no input
pipeline to fail) and are compared with one uninterrupted run of the same config.
"""

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import chex
import numpy as np
import orbax.checkpoint as ocp
import psutil
import pytest

from resnet_jax.core.errors import CheckpointSaveError, NoRestorableCheckpointError
from resnet_jax.run.rundir import DAMAGED_CHECKPOINTS, RunDir
from resnet_jax.train.loop import train_and_evaluate
from tests.support.faults import FlakyInput
from tests.support.training import (
    REPO,
    checkpoint_leaves,
    command,
    env,
    run,
    run_two_processes,
    small_config,
    train_losses,
)

GRAIN = {"data.on_device": False, "data.worker_count": 1, "data.retry_backoff_seconds": 0.1, "num_steps": 10}


@pytest.fixture(scope="module")
def reference(cifar_slice_data_dir, tmp_path_factory):
    """An uninterrupted 10-step run: (its workdir, the state it saved at step 10)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train_and_evaluate(small_config(cifar_slice_data_dir, **GRAIN), str(workdir))
    return workdir, checkpoint_leaves(workdir, 10)


def _assert_ends_as(workdir, reference) -> None:
    chex.assert_trees_all_equal(checkpoint_leaves(workdir, 10), reference[1])


def _grain_workers() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())
    ]


def test_a_grain_worker_killed_mid_run(cifar_slice_data_dir, tmp_path, reference, caplog):
    killed = []

    def kill_a_worker_after_step_3():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            metrics = RunDir(tmp_path).metrics_path
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                for worker in _grain_workers():
                    os.kill(worker.pid, signal.SIGKILL)
                    killed.append(worker.pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker_after_step_3)
    killer.start()
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(small_config(cifar_slice_data_dir, **GRAIN), str(tmp_path))
    killer.join()
    assert killed, "no grain worker was running after step 3"
    assert "terminated unexpectedly with exit code -9" in caplog.text and "rebuilding it" in caplog.text
    _assert_ends_as(tmp_path, reference)


def test_an_oserror_at_a_random_step(cifar_slice_data_dir, tmp_path, reference, caplog):
    batch = int(np.random.default_rng(20261204).integers(2, 10))  # seeded: a failure can be rerun as it was
    flaky = FlakyInput(batch, OSError(errno.EBADF, "Bad file descriptor"))
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(small_config(cifar_slice_data_dir, **GRAIN), str(tmp_path), input_hook=flaky)
    assert flaky.requests["count"] > batch and "Bad file descriptor" in caplog.text, f"batch {batch}"
    _assert_ends_as(tmp_path, reference)


def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(
    cifar_slice_data_dir, tmp_path, reference, caplog
):
    train_and_evaluate(small_config(cifar_slice_data_dir, **{**GRAIN, "num_steps": 6}), str(tmp_path))
    damaged = {}
    run_dir = RunDir(tmp_path)
    for path in sorted(Path(run_dir.checkpoint(6)).rglob("*")):
        if path.is_file() and path.stat().st_size > 100:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
            damaged[path.relative_to(Path(run_dir.checkpoints))] = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(small_config(cifar_slice_data_dir, **GRAIN), str(tmp_path))
    assert "Checkpoint 6" in caplog.text and "Resuming from checkpoint 4" in caplog.text
    _assert_ends_as(tmp_path, reference)
    (moved_to,) = (tmp_path / DAMAGED_CHECKPOINTS).iterdir()  # moved aside once, untouched, under its own name
    assert all((moved_to / path).read_bytes() == content for path, content in damaged.items())

    for step in (6, 8, 10):  # when none restores, the run stops and names each checkpoint
        for path in Path(run_dir.checkpoint(step)).rglob("*"):
            if path.is_file() and path.stat().st_size > 100:
                path.write_bytes(b"")
    with pytest.raises(NoRestorableCheckpointError, match="step 10: .*step 8: .*step 6: .*new --workdir"):
        train_and_evaluate(small_config(cifar_slice_data_dir, **GRAIN), str(tmp_path))
    assert len(list((tmp_path / DAMAGED_CHECKPOINTS).iterdir())) == 4 and not list(run_dir.checkpoints.iterdir())


def test_a_save_that_fails_for_a_full_disk_then_a_rerun(cifar_slice_data_dir, tmp_path, reference, monkeypatch):
    real_save = ocp.CheckpointManager.save

    def save(manager, step, *args, **kwargs):
        if step == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(manager, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(
        CheckpointSaveError,
        match=r"step 6 .*No space left on device.*needs about [\d,]+ MiB, and "
        r"[\d,]+ MiB are free there.*resumes from step 4",
    ):
        train_and_evaluate(small_config(cifar_slice_data_dir, **GRAIN), str(tmp_path))
    assert RunDir(tmp_path).saved_steps() == [2, 4]  # the earlier ones, intact
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    train_and_evaluate(small_config(cifar_slice_data_dir, **GRAIN), str(tmp_path))
    _assert_ends_as(tmp_path, reference)


def _two_processes(data_dir, workdir, *fault_flags, **overrides):
    module = "tests.support.faulty_main" if fault_flags else "resnet_jax.main"
    grain = {**GRAIN, "data.worker_count": 0, **overrides}
    return run_two_processes(command(data_dir, workdir, module=module, **grain) + list(fault_flags))


def test_two_processes_recover_stop_and_fall_back_together(cifar_slice_data_dir, tmp_path, reference):
    # a transient fault on process 1 only: it recovers alone, and both finish
    codes, outputs = _two_processes(
        cifar_slice_data_dir, tmp_path / "transient", "--fault=transient", "--fault_process=1", "--fault_batch=4"
    )
    assert codes == [0, 0], outputs[1][-3000:]
    assert "rebuilding it at its last position" in outputs[1] and "rebuilding" not in outputs[0]
    # the same stream as one process reads (up to the float32 summation order of two processes)
    np.testing.assert_allclose(train_losses(tmp_path / "transient")[:4], train_losses(reference[0])[:4], rtol=2e-4)

    # a permanent fault on process 1: both processes stop, with the same message, and keep their checkpoints
    workdir = tmp_path / "permanent"
    codes, outputs = _two_processes(
        cifar_slice_data_dir, workdir, "--fault=permanent", "--fault_process=1", "--fault_batch=8"
    )
    assert codes == [1, 1], outputs[0][-3000:] + outputs[1][-3000:]
    assert all("Process 1's training input pipeline failed for good" in output for output in outputs)
    saved = RunDir(workdir).saved_steps()
    assert saved[-1] == 6, saved

    # its newest checkpoint damaged, the rerun falls back to the previous one on both processes, and finishes
    for path in Path(RunDir(workdir).checkpoint(6)).rglob("*"):
        if path.is_file() and path.stat().st_size > 100:
            path.write_bytes(b"")
    codes, outputs = _two_processes(cifar_slice_data_dir, workdir)
    assert codes == [0, 0], outputs[0][-3000:]
    assert all("Resuming from checkpoint 4" in output for output in outputs)
    # Both recoveries are exact: the two runs, healed in different ways, end bit-identical.
    chex.assert_trees_all_equal(checkpoint_leaves(workdir, 10), checkpoint_leaves(tmp_path / "transient", 10))


@pytest.mark.parametrize("case", ["missing config", "missing dataset", "workdir", "negative learning rate"])
def test_user_errors_are_one_line_and_exit_status_2(cifar_slice_data_dir, tmp_path, case):
    workdir, data_dir, extra = tmp_path / "run", cifar_slice_data_dir, []
    if case == "missing dataset":
        data_dir = tmp_path / "nowhere"
    if case == "workdir":
        (tmp_path / "a_file").write_text("")
        workdir = tmp_path / "a_file" / "run"
    if case == "negative learning rate":
        extra = ["--config.schedule.base_lr=-1"]
    argv = command(data_dir, workdir) + extra
    if case == "missing config":
        argv[3] = "--config=configs/nope.py"
    result = run(argv, expect=2)
    lines = result.stderr.strip().splitlines()
    line = lines[-1]  # the error is the last line, and the only one that names it
    assert [entry for entry in lines if entry.startswith("resnet_jax:")] == [line]
    assert "Traceback" not in result.stderr and line.startswith("resnet_jax: error: ")
    assert {
        "missing config": "No such file or directory: 'configs/nope.py'",
        "missing dataset": "prepare it with: python -m resnet_jax.data.prepare cifar10",
        "workdir": "cannot be created or written",
        "negative learning rate": "base_lr=-1.0 must be positive",
    }[case] in line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_grain_workers_die_with_their_run_however_it_dies(cifar_slice_data_dir, tmp_path):
    overrides = {**GRAIN, "data.worker_count": 2, "num_steps": 100_000, "checkpoint_every_steps": 1000}
    process = subprocess.Popen(command(cifar_slice_data_dir, tmp_path, **overrides), cwd=REPO, env=env())
    try:
        deadline = time.time() + 300
        while not (RunDir(tmp_path).metrics_path.exists() and len(psutil.Process(process.pid).children(True)) >= 2):
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.2)
        workers = psutil.Process(process.pid).children(recursive=True)
    finally:
        process.kill()  # kill -9: nothing of the run's own cleanup runs
        process.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"grain workers {[w.pid for w in alive]} outlived their run"
