"""Helpers for the tests that train: a small recipe on the real CIFAR-10 slice, in this process or as a command."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import cifar10
from resnet_jax.run.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]

# A small, fast recipe: global batch 32 in BN groups of 4, so it splits over 1, 2 or 8 devices alike.
SMALL = {
    "batch_size": 32,
    "model.bn_group_size": 4,
    "log_every_steps": 1,
    "eval.every_steps": 1000,
    "eval.batch_size": 128,
    "checkpoint_every_steps": 2,
    "data.worker_count": 0,
    "schedule.base_lr": 0.01,
    "steps_per_dispatch": 1,
}


def small_config(data_dir, arg="resnet20", **overrides):
    config = cifar10.get_config(arg)
    config.data.data_dir = str(data_dir)
    for key, value in {**SMALL, **overrides}.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def command(data_dir, workdir, arg="resnet20", module="resnet_jax.main", **overrides):
    flags = [f"--config.{k}={v}" for k, v in {**SMALL, "data.data_dir": data_dir, **overrides}.items()]
    return [sys.executable, "-m", module, f"--config=configs/cifar10.py:{arg}", f"--workdir={workdir}", *flags]


def env(devices=1):
    result = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    result["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return result


def run(command, devices=1, timeout=600, expect=0):
    result = subprocess.run(command, cwd=REPO, env=env(devices), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_losses(workdir):
    return np.array([r["loss"] for r in RunDir(workdir).read_metrics() if r["kind"] == "train"])


def checkpoint_leaves(workdir, step, item=None):
    """The arrays of the state saved at `step` as NumPy arrays (whatever devices saved them), in a fixed order:
    all of them, or those under `item`."""
    path = Path(RunDir(workdir).checkpoint(step)) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree, is_leaf=lambda x: hasattr(x, "shape")
    )
    state = checkpointer.restore(path, restore_args=as_numpy)
    return [np.asarray(x) for x in _leaves(state if item is None else state[item])]


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for k in sorted(tree) for leaf in _leaves(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in _leaves(v)]
    return [tree]


def run_two_processes(argv: list[str], timeout: int = 600) -> tuple[list[int], list[str]]:
    """`argv` as two jax.distributed processes on localhost (one CPU device each): their exit codes and outputs."""
    port = free_port()
    processes = [
        subprocess.Popen(
            argv + [f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
            cwd=REPO,
            env=env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    return [p.returncode for p in processes], outputs
