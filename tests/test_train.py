"""Training end to end on a real slice of CIFAR-10: learning, data parallelism, multi-host, multi-runs, preemption,
resume, and the errors a person sees."""

import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import imagenet_r18
from resnet_jax.core.errors import NonFiniteLossError
from resnet_jax.core.sharding import make_mesh
from resnet_jax.data import on_device
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.eval.evaluator import make_evaluator
from resnet_jax.recipe.config import model_from_config
from resnet_jax.recipe.members import Members
from resnet_jax.run.load import load_run
from resnet_jax.run.rundir import RunDir
from resnet_jax.train.bn_stats import recompute_batch_stats
from resnet_jax.train.loop import train_and_evaluate
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


def test_short_training_learns_and_compiles_its_evaluation_once(cifar_slice_data_dir, tmp_path, caplog):
    config = small_config(
        cifar_slice_data_dir,
        batch_size=64,
        num_steps=60,
        log_every_steps=20,
        checkpoint_every_steps=60,
        steps_per_dispatch=10,
        **{"eval.every_steps": 20, "eval.batch_size": 250, "model.bn_group_size": 32},
    )
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            result = train_and_evaluate(config, str(tmp_path))
    finally:
        jax.config.update("jax_log_compiles", False)
    # three periodic evaluations (steps 20, 40, 60; the last is the final one) and one compilation of their step
    evaluations = [r for r in RunDir(tmp_path).read_metrics() if r["kind"] == "eval"]
    assert [r["step"] for r in evaluations] == [20, 40, 60]
    assert caplog.text.count("Compiling jit(evaluate_split)") == 1
    losses = train_losses(tmp_path)
    assert losses[-1] < 0.8 * losses[0]
    assert result["examples"] == 500  # every test image of the slice, counted once
    assert result["top1_error"] < 0.8  # chance is 0.9; 500 images make 0.8 a > 7 sigma margin
    assert result["parameters"] == 269_722 and result["bn_statistics"] == "moving averages"
    assert Path(RunDir(tmp_path).curves).stat().st_size > 10_000
    assert list(RunDir(tmp_path).tensorboard.iterdir())


def test_one_device_eight_devices_and_two_processes_agree(cifar_slice_data_dir, tmp_path):
    one, eight = tmp_path / "one", tmp_path / "eight"
    # XLA's convolutions on one device too ('auto' gives a single CPU device oneDNN's): only the device count differs
    run(command(cifar_slice_data_dir, one, num_steps=4, **{"model.conv_impl": "xla"}), devices=1)
    # An evaluation batch of 100 on 8 devices: fitted to 104, every test image of the slice counted once.
    output = run(command(cifar_slice_data_dir, eight, num_steps=4, **{"eval.batch_size": 100}), devices=8)
    np.testing.assert_allclose(train_losses(eight), train_losses(one), rtol=2e-4)
    result = RunDir(eight).read_result()
    assert result["examples"] == 500 and result["eval_batch_size"] == 104
    assert "Evaluation batch 100 rounded up to 104" in output.stderr

    two = tmp_path / "two"
    codes, outputs = run_two_processes(command(cifar_slice_data_dir, two, num_steps=4))
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    np.testing.assert_allclose(train_losses(two), train_losses(one), rtol=2e-4)


def test_member_k_of_a_multi_run_follows_the_single_run_of_seed_k(cifar_slice_data_dir, tmp_path):
    steps = {"num_steps": 4, "log_every_steps": 1, "checkpoint_every_steps": 4}
    multi = train_and_evaluate(small_config(cifar_slice_data_dir, runs=2, **steps), str(tmp_path / "multi"))
    single = train_and_evaluate(small_config(cifar_slice_data_dir, seed=1, **steps), str(tmp_path / "single"))
    members = RunDir(tmp_path / "multi").members()
    assert [m.name for m in members] == ["seed0", "seed1"]
    # The same computation, batched: the first step agrees to float32 rounding, later ones to its amplification.
    member, alone = train_losses(members[1].path), train_losses(tmp_path / "single")
    np.testing.assert_allclose(member[0], alone[0], rtol=1e-6)
    np.testing.assert_allclose(member, alone, rtol=1e-3)
    assert not np.allclose(train_losses(members[0].path), train_losses(members[1].path), rtol=1e-2)
    assert multi["runs"][1]["top1_error"] == pytest.approx(single["top1_error"], abs=0.01)  # 500 images: 5 flips
    assert multi["top1_error"] == pytest.approx(np.mean([r["top1_error"] for r in multi["runs"]]))
    assert multi["top1_error_std"] == pytest.approx(np.std([r["top1_error"] for r in multi["runs"]], ddof=1))
    assert members[1].read_result()["seed"] == 1
    _, _, state = load_run(tmp_path / "multi")  # one checkpoint holds both members
    assert state.params["conv1"]["kernel"].shape[0] == 2


def test_kill_9_and_resume_is_bit_identical(cifar_slice_data_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(command(cifar_slice_data_dir, straight, num_steps=8))

    process = subprocess.Popen(
        command(cifar_slice_data_dir, killed, num_steps=8),
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not RunDir(killed).checkpoint(4).is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not RunDir(killed).checkpoint(8).exists(), "the run finished before it could be killed"
    run(command(cifar_slice_data_dir, killed, num_steps=8))

    # the standalone evaluation of the final checkpoint agrees with the run's own final evaluation
    run([sys.executable, "-m", "resnet_jax.evaluate", f"--workdir={straight}"])
    (standalone,) = RunDir(straight).evaluations()
    final = RunDir(straight).read_result()
    assert standalone["step"] == 8 and standalone["protocol"] == "single"
    assert standalone["examples"] == final["examples"] == 500
    assert standalone["top1_error"] == final["top1_error"]

    a, b = checkpoint_leaves(straight, 8), checkpoint_leaves(killed, 8)
    assert len(a) == len(b) > 100
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_and_exit(cifar_slice_data_dir, tmp_path, signum):
    process = subprocess.Popen(
        command(cifar_slice_data_dir, tmp_path, num_steps=10_000, checkpoint_every_steps=1000),
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        metrics = RunDir(tmp_path).metrics_path
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output[-3000:]
    assert "Preempted: saved step" in output and "Traceback" not in output
    assert ("Ctrl-C: the run saves" in output) == (signum == signal.SIGINT)
    saved = RunDir(tmp_path).saved_steps()
    assert saved and 3 <= saved[-1] < 1000
    if signum == signal.SIGTERM:  # the rerun resumes at that step (here told to stop one step later)
        config = small_config(cifar_slice_data_dir, num_steps=saved[-1] + 1, checkpoint_every_steps=1000)
        train_and_evaluate(config, str(tmp_path))
        assert [r["step"] for r in RunDir(tmp_path).resumes()] == [saved[-1]] and RunDir(tmp_path).is_finished()


def test_a_preemption_during_bn_recomputation_stops_it_and_the_rerun_finishes(
    cifar_slice_data_dir, tmp_path, monkeypatch
):
    """SIGTERM or Ctrl-C (the trainer's preemption flag) between the recomputation's dispatches stops the run with
    RunStopped; the checkpoint of the last step is intact and the same command recomputes and evaluates."""
    from resnet_jax.core.errors import RunStopped
    from resnet_jax.train import loop

    config = small_config(cifar_slice_data_dir, num_steps=2, bn_statistics="recomputed", bn_recompute_examples=64)
    trainer = loop.Trainer(config, str(tmp_path))

    def signalled(*args, **kwargs):  # the signal arrives as the phase starts
        trainer.preemption.event.set()
        return recompute_batch_stats(*args, **kwargs)

    monkeypatch.setattr(loop, "recompute_batch_stats", signalled)
    with pytest.raises(RunStopped, match="BN statistics: stopped. The checkpoints are intact; rerun"):
        trainer.run()
    assert not RunDir(tmp_path).is_finished() and RunDir(tmp_path).checkpoint(2).exists()
    monkeypatch.undo()

    # The same during the final evaluation (streamed from grain: the phase that is long on ImageNet).
    streamed = small_config(
        cifar_slice_data_dir,
        num_steps=2,
        bn_statistics="recomputed",
        bn_recompute_examples=64,
        **{"data.on_device": False},
    )
    trainer = loop.Trainer(streamed, str(tmp_path / "streamed"))

    def then_signalled(*args, **kwargs):  # the signal arrives once the statistics are recomputed
        stats = recompute_batch_stats(*args, **kwargs)
        trainer.preemption.event.set()
        return stats

    monkeypatch.setattr(loop, "recompute_batch_stats", then_signalled)
    with pytest.raises(RunStopped, match=r"Evaluation \(single, test\): stopped. The checkpoints are intact"):
        trainer.run()
    assert not RunDir(tmp_path / "streamed").is_finished() and RunDir(tmp_path / "streamed").checkpoint(2).exists()
    monkeypatch.undo()
    for run_config, workdir in ((config, tmp_path), (streamed, tmp_path / "streamed")):
        result = train_and_evaluate(run_config, str(workdir))
        assert result["bn_statistics"] == "recomputed over 64 training images" and RunDir(workdir).is_finished()


def test_a_long_phase_logs_its_rate_and_eta_and_stops_when_asked(caplog):
    from resnet_jax.core.errors import RunStopped
    from resnet_jax.core.progress import Progress

    asked = []
    progress = Progress("Phase", 100, stop=lambda: bool(asked), stopped="Rerun it.", every=0.0)
    with caplog.at_level(logging.INFO):
        progress.step(40)
        progress.step(100)  # the last step logs nothing: the phase's own line follows
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Phase")]
    assert re.fullmatch(r"Phase: 40/100 images, [\d.]+ images/s, ETA \d+ s\.", line), line
    asked.append(True)
    with pytest.raises(RunStopped, match=r"^Phase: stopped. Rerun it.$"):
        progress.step(50)


def test_bn_recompute_stores_a_plain_average_over_training_batches(cifar_slice_data_dir, tmp_path):
    config = small_config(cifar_slice_data_dir, num_steps=2, bn_statistics="recomputed", bn_recompute_examples=64)
    result = train_and_evaluate(config, str(tmp_path))
    assert result["bn_statistics"] == "recomputed over 64 training images"
    _, _, state = load_run(tmp_path)  # the checkpoint keeps the training state's moving averages
    # Independently: the stem's BN statistics are those of its 3x3 convolution over each batch of 32 of the stream
    # of seed + 1, averaged over the two batches.
    kernel = state.params["conv1"]["kernel"][0]
    dataset = PreparedDataset.open(config.data)
    arrays = on_device.TrainData.load(dataset, config.data, make_mesh()).arrays
    orders = on_device.two_epoch_orders(jnp.int32(1), 0, 1280)
    means, variances = [], []
    for i in range(2):
        images = on_device.train_batch(arrays, orders, jnp.int32(1), 0, i, 32)["image"]
        y = jax.lax.conv_general_dilated(
            images, kernel, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        means.append(y.mean((0, 1, 2)))
        variances.append(y.var((0, 1, 2)))
    recomputed = recompute_batch_stats(config, dataset, state, Members.from_config(config), make_mesh())
    np.testing.assert_allclose(recomputed["bn1"]["mean"][0], np.mean(means, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(recomputed["bn1"]["var"][0], np.mean(variances, 0), rtol=1e-3, atol=1e-5)
    # Loading the run gives the statistics its final evaluation used (stored beside the checkpoint, which keeps
    # the moving averages): an evaluation of the loaded run is the run's own result.
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.batch_stats), jax.tree.map(np.asarray, recomputed))
    moving_bn1_mean = checkpoint_leaves(tmp_path, 2, "batch_stats")[0].reshape(-1)  # sorted keys: bn1, then mean
    assert moving_bn1_mean.shape == recomputed["bn1"]["mean"][0].shape
    assert not np.allclose(moving_bn1_mean, recomputed["bn1"]["mean"][0])
    model = model_from_config(config.model)
    evaluator = make_evaluator(config, model, dataset, make_mesh(), Members.from_config(config))
    (again,) = evaluator(state.variables())
    assert again.top1_error == result["top1_error"]


def test_a_set_up_that_fails_closes_what_it_opened(cifar_slice_data_dir, tmp_path, monkeypatch):
    from resnet_jax.train import loop

    closed = []
    for name in ("make_feed", "Checkpointer", "MetricWriter"):
        opener = getattr(loop, name)

        def recording(*args, opener=opener, name=name, **kwargs):
            opened = opener(*args, **kwargs)
            close = opened.close
            opened.close = lambda: (closed.append(name), close())[1]
            return opened

        monkeypatch.setattr(loop, name, recording)

    def broken(*args, **kwargs):
        raise RuntimeError("no evaluator")

    monkeypatch.setattr(loop, "make_evaluator", broken)
    with pytest.raises(RuntimeError, match="no evaluator"):
        loop.Trainer(small_config(cifar_slice_data_dir, num_steps=2), str(tmp_path))
    assert closed == ["Checkpointer", "MetricWriter", "make_feed"]  # each of them, in reverse order


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(cifar_slice_data_dir, tmp_path):
    train_and_evaluate(small_config(cifar_slice_data_dir, num_steps=4), str(tmp_path))
    config = small_config(cifar_slice_data_dir, num_steps=40, **{"schedule.base_lr": 1e30})
    nan = r"last good checkpoints are kept \(a rerun resumes from step 4\).*--accept_changes=schedule.base_lr resumes"
    with pytest.raises(NonFiniteLossError, match=nan):
        train_and_evaluate(config, str(tmp_path), accept_changes=["schedule.base_lr"])
    saved = RunDir(tmp_path).saved_steps()
    assert all(np.isfinite(x).all() for x in checkpoint_leaves(tmp_path, saved[-1], "params"))


def test_quick_start_trains(tmp_path, cifar10_data_dir):
    """The README's main-job quick start, with fewer steps, on the dataset it prepares (prepared once for the session
    by the same `prepare`; `--config.prepare_from` then finds it ready, as a second quick start does)."""
    tarball = REPO.parent / "shared" / "data" / "cifar10" / "cifar-10-images-jpg.tar.gz"
    data_dir = cifar10_data_dir
    result = run(
        [
            sys.executable,
            "-m",
            "resnet_jax.main",
            "--config=configs/cifar10.py:resnet20,quick",
            f"--config.prepare_from={tarball}",
            f"--config.data.data_dir={data_dir}",
            f"--workdir={tmp_path / 'run'}",
            "--config.num_steps=25",
            "--config.eval.every_steps=25",
            "--config.log_every_steps=5",
            "--config.steps_per_dispatch=5",
        ]
    )
    assert "resnet20 test (single): top-1 error" in result.stderr
    run_dir = RunDir(tmp_path / "run")
    assert run_dir.read_result()["examples"] == 10_000
    losses = [r["loss"] for r in run_dir.read_metrics() if r["kind"] == "train"]
    # It learns: the training loss falls, and the test error is below chance (90%).
    assert len(losses) == 5 and losses[-1] < 0.95 * losses[0] and run_dir.read_result()["top1_error"] < 0.89


def test_the_imagenet_recipe_trains_end_to_end(eight_imagenet_data_dir, tmp_path):
    """The ImageNet path on a CPU-sized scale: grain with uint8 crops finished in the step, the plateau schedule on
    the training error, BN statistics recomputed, the 1-crop evaluation during training and 10-crop at the end."""
    config = imagenet_r18.get_config()
    config.data.data_dir, config.data.worker_count = str(eight_imagenet_data_dir), 0
    config.batch_size, config.model.bn_group_size, config.num_steps = 8, 4, 4
    config.log_every_steps = config.eval.every_steps = config.checkpoint_every_steps = 2
    config.eval.batch_size, config.bn_recompute_examples = 8, 16
    result = train_and_evaluate(config, str(tmp_path))
    assert result["protocol"] == "10crop" and result["examples"] == 8
    assert result["bn_statistics"] == "recomputed over 16 training images"
    records = RunDir(tmp_path).read_metrics()
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]  # 1-crop, periodic
    assert [r["protocol"] for r in records if r["kind"] == "eval_10crop"] == ["10crop"]
    assert all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train")
