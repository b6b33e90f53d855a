"""The commands' common mistakes end in one line that says what is wrong and how to fix it, with exit status 2."""

import os
import subprocess
import sys

import pytest

from configs import cifar10
from resnet_jax.run.rundir import RunDir
from tests.support.training import REPO, run


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


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--nets=resnet21"], "--nets: unknown nets ['resnet21']"),
        (["--schedule_fraction=1/3"], "fraction=1/3 must be in (0, 1] and give whole iteration counts"),
        (["--quick", "--schedule_fraction=1/8"], "one fraction=F, without quick"),
    ],
)
def test_depth_study_mistakes_are_one_line_with_status_2(tmp_path, flags, said):
    argv = [sys.executable, "-m", "experiments.cifar_depth_study", f"--workdir={tmp_path}", "--print_commands"]
    result = run(argv + flags, expect=2)
    assert "Traceback" not in result.stderr and said in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]


def test_the_compilation_cache_is_jax_s_variable_where_set(tmp_path):
    """`--compilation_cache` defaults to JAX's own JAX_COMPILATION_CACHE_DIR (the tests' commands share the session's
    cache through it), else to the user's cache directory."""
    defaults = {}
    for name, value in {"set": str(tmp_path), "unset": None}.items():
        environment = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
        environment.update({"JAX_COMPILATION_CACHE_DIR": value} if value else {})
        code = "import resnet_jax.main\nfrom absl import flags\nprint(flags.FLAGS['compilation_cache'].default)"
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True)
        defaults[name] = result.stdout.strip()
    assert defaults == {"set": str(tmp_path), "unset": "~/.cache/resnet_jax/jax"}
