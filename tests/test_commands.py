"""The commands' common mistakes end in one line that says what is wrong and how to fix it, with exit status 2."""

import sys

import pytest

from configs import cifar10
from resnet_jax.run.rundir import RunDir
from tests.support.training import run


@pytest.mark.parametrize("case", ["not a run", "protocol", "split", "no checkpoint", "figure 7 of no run"])
def test_evaluation_mistakes_are_one_line_with_status_2(cifar_slice_data_dir, tmp_path, case):
    workdir = tmp_path / "run"
    if case != "not a run":
        config = cifar10.get_config("resnet20")
        config.data.data_dir = str(cifar_slice_data_dir)
        RunDir(workdir).create().start(config)
    argv = [sys.executable, "-m", "resnet_jax.evaluate", f"--workdir={workdir}"]
    extra = {"protocol": ["--protocol=10crop"], "split": ["--split=validation"]}.get(case, [])
    if case == "figure 7 of no run":
        argv = [sys.executable, "-m", "experiments.layer_responses", f"--workdirs={tmp_path / 'nothing'}"]
    result = run(argv + extra, expect=2)
    lines = result.stderr.strip().splitlines()
    line = lines[-1]  # the error is the last line, and the only one that names it
    assert [entry for entry in lines if entry.startswith("resnet_jax:")] == [line]
    assert "Traceback" not in result.stderr and line.startswith("resnet_jax: error: "), result.stderr[-2000:]
    assert {
        "not a run": "is not the workdir of a resnet_jax run",
        "protocol": "Test protocol '10crop' does not apply to cifar10",
        "split": "--split=validation: cifar10 in this run has the splits train, test",
        "no checkpoint": "holds no checkpoint",
        "figure 7 of no run": "is not the workdir of a resnet_jax run",
    }[case] in line
