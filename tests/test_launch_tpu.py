"""launch_tpu.sh, offline: a fake `gcloud` on the PATH records what the launcher asks of it."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE_GCLOUD = """#!/usr/bin/env bash
printf '%s\\n' "$(printf '%q ' "$@")" >> "$GCLOUD_LOG"
[[ "$*" == *" describe "* ]] && exit "${DESCRIBE_EXIT:-1}"
exit 0
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "gcloud.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GCLOUD_LOG": str(log),
        "PROJECT": "proj",
        "ZONE": "us-central2-b",
        "BUCKET": "bkt",
        "ACCELERATOR_TYPE": "v4-32",
        "TPU_NAME": "tpu1",
    }
    return env, log


def _launch(env, *args):
    return subprocess.run(
        [str(REPO / "launch_tpu.sh"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def _calls(log):
    return [shlex.split(line) for line in log.read_text().splitlines()]


def test_creates_copies_installs_and_runs_on_all_workers(fake_gcloud):
    env, log = fake_gcloud
    result = _launch(env, "--config=configs/imagenet_table3.py:resnet50", "--config.batch_size=1024")
    assert result.returncode == 0, result.stderr
    calls = _calls(log)
    verbs = [c[3] for c in calls]
    assert verbs == ["describe", "create", "scp", "ssh", "ssh"]
    create = calls[1]
    assert "--accelerator-type=v4-32" in create and "--zone=us-central2-b" in create and "--project=proj" in create
    assert all("--worker=all" in c for c in calls[2:])
    run = calls[-1][-1]
    assert "python3 -m resnet_jax.main --config=configs/imagenet_table3.py:resnet50 --config.batch_size=1024" in run
    assert "--distributed" in run and "--workdir=gs://bkt/workdirs/imagenet_table3_resnet50" in run
    assert "--config.data.data_dir=gs://bkt/tensorflow_datasets" in run
    assert "pip install" in calls[3][-1] and "jax[tpu]" in calls[3][-1]
    assert "-e '.[train]' -c constraints.txt" in calls[3][-1]  # main needs the training stack, at tested versions


def test_reuses_an_existing_tpu(fake_gcloud):
    env, log = fake_gcloud
    assert _launch({**env, "DESCRIBE_EXIT": "0"}, "--config=configs/imagenet_r50.py").returncode == 0
    assert [c[3] for c in _calls(log)] == ["describe", "scp", "ssh", "ssh"]


def test_dry_run_prints_and_runs_nothing(fake_gcloud):
    env, log = fake_gcloud
    result = _launch(env, "--dry-run", "--name=trial", "--config=configs/imagenet_r50.py")
    assert result.returncode == 0 and not log.exists()
    lines = [line for line in result.stdout.splitlines() if line.startswith("gcloud")]
    assert [line.split()[4] for line in lines] == ["create", "scp", "ssh", "ssh"]
    assert "gs://bkt/workdirs/trial" in lines[-1]


def test_missing_settings_print_usage(fake_gcloud):
    env, log = fake_gcloud
    result = _launch({k: v for k, v in env.items() if k != "BUCKET"}, "--config=configs/imagenet_r50.py")
    assert result.returncode == 2 and "set BUCKET" in result.stderr and "ACCELERATOR_TYPE" in result.stderr
    result = _launch(env)
    assert result.returncode == 2 and "--config" in result.stderr
    assert not log.exists()
