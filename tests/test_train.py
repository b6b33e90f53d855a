"""Training end to end on a real slice of CIFAR-10: learning, data parallelism, multi-host, preemption, resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import cifar10
from resnet_jax import train
from resnet_jax.checkpoints import ModelMismatchError
from resnet_jax.metric_writer import read_metrics

REPO = Path(__file__).resolve().parents[1]

# A small, fast recipe: global batch 32 in BN groups of 4, so it splits over 1, 2 or 8 devices alike.
SMALL = {"batch_size": 32, "model.bn_group_size": 4, "log_every_steps": 1, "eval.every_steps": 1000,
         "eval.batch_size": 128, "checkpoint_every_steps": 2, "data.worker_count": 0,
         "schedule.base_lr": 0.01}


def _config(data_dir, arg="resnet20", **overrides):
    config = cifar10.get_config(arg)
    config.data.data_dir = str(data_dir)
    for key, value in {**SMALL, **overrides}.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def _command(data_dir, workdir, arg="resnet20", **overrides):
    flags = [f"--config.{k}={v}" for k, v in {**SMALL, "data.data_dir": data_dir, **overrides}.items()]
    return [sys.executable, "-m", "resnet_jax.main", f"--config=configs/cifar10.py:{arg}", f"--workdir={workdir}",
            *flags]


def _env(devices=1):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run(command, devices=1, timeout=600):
    result = subprocess.run(command, cwd=REPO, env=_env(devices), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _train_losses(workdir):
    return np.array([r["loss"] for r in read_metrics(workdir) if r["kind"] == "train"])


def _final_state(workdir, step):
    return ocp.PyTreeCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / "state")


def test_short_training_learns(cifar_slice_data_dir, tmp_path):
    config = _config(cifar_slice_data_dir, batch_size=64, num_steps=100, log_every_steps=20,
                     checkpoint_every_steps=100, **{"eval.every_steps": 100, "eval.batch_size": 250,
                                                   "model.bn_group_size": 32})
    result = train.train_and_evaluate(config, str(tmp_path))
    losses = _train_losses(tmp_path)
    assert losses[-1] < 0.8 * losses[0]
    assert result["examples"] == 500  # every test image of the slice, counted once
    assert result["top1_error"] < 0.8  # chance is 0.9; 500 images make 0.8 a > 7 sigma margin
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert list((tmp_path / "tensorboard").iterdir())


def test_one_device_eight_devices_and_two_processes_agree(cifar_slice_data_dir, tmp_path):
    one, eight = tmp_path / "one", tmp_path / "eight"
    _run(_command(cifar_slice_data_dir, one, num_steps=4), devices=1)
    _run(_command(cifar_slice_data_dir, eight, num_steps=4), devices=8)
    np.testing.assert_allclose(_train_losses(eight), _train_losses(one), rtol=2e-4)

    two = tmp_path / "two"
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    processes = [subprocess.Popen(
        _command(cifar_slice_data_dir, two, num_steps=4) + [
            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]
    np.testing.assert_allclose(_train_losses(two), _train_losses(one), rtol=2e-4)


def test_kill_9_and_resume_is_bit_identical(cifar_slice_data_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_command(cifar_slice_data_dir, straight, num_steps=8))

    process = subprocess.Popen(_command(cifar_slice_data_dir, killed, num_steps=8), cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "4").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not (killed / "checkpoints" / "8").exists(), "the run finished before it could be killed"
    _run(_command(cifar_slice_data_dir, killed, num_steps=8))

    # the standalone evaluation of the final checkpoint agrees with the run's own final evaluation
    _run([sys.executable, "-m", "resnet_jax.evaluate", f"--workdir={straight}"])
    standalone = json.loads((straight / "eval_single_test_8.json").read_text())
    final = json.loads((straight / "result.json").read_text())
    assert standalone["examples"] == final["examples"] == 500
    assert standalone["top1_error"] == final["top1_error"]

    a, b = _final_state(straight, 8), _final_state(killed, 8)
    leaves_a, leaves_b = [np.asarray(x) for x in _leaves(a)], [np.asarray(x) for x in _leaves(b)]
    assert len(leaves_a) == len(leaves_b) > 100
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for k in sorted(tree) for leaf in _leaves(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in _leaves(v)]
    return [tree]


def test_sigterm_saves_and_exits(cifar_slice_data_dir, tmp_path):
    process = subprocess.Popen(_command(cifar_slice_data_dir, tmp_path, num_steps=10_000, checkpoint_every_steps=1000),
                               cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        metrics = tmp_path / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output[-3000:]
    assert "Preempted: saved step" in output
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 3 <= saved[-1] < 1000


def test_resuming_with_another_model_is_a_clear_error(cifar_slice_data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative workdir, as people type it
    train.train_and_evaluate(_config(cifar_slice_data_dir, num_steps=2), "run")
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    with pytest.raises(ModelMismatchError, match="another model.*name.*resnet20.*resnet32.*new --workdir"):
        train.train_and_evaluate(_config(cifar_slice_data_dir, "resnet32", num_steps=4), "run")


def test_bn_recompute_stores_a_plain_average_over_training_batches(cifar_slice_data_dir, tmp_path):
    import jax
    import jax.numpy as jnp

    from resnet_jax import data

    config = _config(cifar_slice_data_dir, num_steps=2, bn_recompute_examples=64)
    train.train_and_evaluate(config, str(tmp_path))
    _, _, state = train.load_run(str(tmp_path))
    # Independently: the stem's BN statistics are those of its 3x3 convolution over each batch of 32 (seed + 1),
    # averaged over the two batches.
    kernel = state.params["conv1"]["kernel"]
    iterator = data.train_iterator(config.data, global_batch_size=32, seed=config.seed + 1)
    means, variances = [], []
    for _ in range(2):
        y = jax.lax.conv_general_dilated(jnp.asarray(next(iterator)["image"]), kernel, (1, 1), [(1, 1), (1, 1)],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        means.append(y.mean((0, 1, 2)))
        variances.append(y.var((0, 1, 2)))
    np.testing.assert_allclose(state.batch_stats["bn1"]["mean"], np.mean(means, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.batch_stats["bn1"]["var"], np.mean(variances, 0), rtol=1e-3, atol=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(cifar_slice_data_dir, tmp_path):
    config = _config(cifar_slice_data_dir, num_steps=4)
    train.train_and_evaluate(config, str(tmp_path))
    config = _config(cifar_slice_data_dir, num_steps=40, **{"schedule.base_lr": 1e30})
    with pytest.raises(train.NonFiniteLossError, match="last good checkpoint"):
        train.train_and_evaluate(config, str(tmp_path))
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    state = _final_state(tmp_path, saved[-1])
    assert all(np.isfinite(np.asarray(x)).all() for x in _leaves(state["params"]))


def test_input_pipeline_failure_is_named_and_the_rerun_resumes(cifar_slice_data_dir, tmp_path, monkeypatch):
    from resnet_jax import data

    class FailsAfter:
        """The real training iterator, until an OSError like the one grain's shared memory once raised on a GPU."""

        def __init__(self, iterator, batches):
            self._iterator, self._left = iterator, batches

        def __next__(self):
            self._left -= 1
            if self._left < 0:
                raise OSError(9, "Bad file descriptor")
            return next(self._iterator)

        def __getattr__(self, name):  # get_state, set_state, close
            return getattr(self._iterator, name)

    real_iterator = data.train_iterator
    config = _config(cifar_slice_data_dir, num_steps=10)
    monkeypatch.setattr(data, "train_iterator", lambda *a, **k: FailsAfter(real_iterator(*a, **k), 2))
    with pytest.raises(train.InputPipelineError, match="before step 1: .*no checkpoint was written yet"):
        train.train_and_evaluate(config, str(tmp_path / "early"))
    # 7 good batches: with the device prefetch 2 batches ahead, the 8th fetch comes before step 6.
    monkeypatch.setattr(data, "train_iterator", lambda *a, **k: FailsAfter(real_iterator(*a, **k), 7))
    failure = r"before step 6: OSError.*rerun the same command.*from the latest checkpoint, step 4, and redoes"
    with pytest.raises(train.InputPipelineError, match=failure):
        train.train_and_evaluate(config, str(tmp_path))
    assert ocp.CheckpointManager(tmp_path / "checkpoints").all_steps() == [2, 4]  # both complete on disk
    monkeypatch.setattr(data, "train_iterator", real_iterator)
    train.train_and_evaluate(config, str(tmp_path))
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["kind"] == "train"] == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10]


def test_bad_config_key_is_named(cifar_slice_data_dir, tmp_path):
    result = subprocess.run(_command(cifar_slice_data_dir, tmp_path, **{"model.shortcutt": "B"}), cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "shortcutt" in result.stderr
    with pytest.raises(ValueError, match="config.batch_size=30 does not divide|multiple of"):
        train.train_and_evaluate(_config(cifar_slice_data_dir, batch_size=30), str(tmp_path))


def test_quick_start_prepares_data_and_trains(tmp_path):
    """The README's main-job quick start, with fewer steps: it prepares CIFAR-10 from the shared files first."""
    tarball = REPO.parent / "shared" / "data" / "cifar10" / "cifar-10-images-jpg.tar.gz"
    if not tarball.exists():
        pytest.skip(f"{tarball} is absent")
    data_dir = tmp_path / "tfds"
    result = _run([sys.executable, "-m", "resnet_jax.main", "--config=configs/cifar10.py:resnet20,quick",
                   f"--config.prepare_from={tarball}", f"--config.data.data_dir={data_dir}",
                   f"--workdir={tmp_path / 'run'}", "--config.num_steps=20", "--config.eval.every_steps=20"])
    assert "resnet20 test (single): top-1 error" in result.stdout
    assert json.loads((tmp_path / "run" / "result.json").read_text())["examples"] == 10_000
