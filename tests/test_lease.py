"""A GPU lease meets no bug the CPU could have found: the planner on a fake clock and fake results, what comes back
and its unpacking, and every way the lease may share a device, on a tiny net with XLA:CPU on the accelerators' path."""

import json
import tarfile

import numpy as np
import pytest

from experiments import lease, lease_plan
from resnet_jax.core.sharding import make_mesh, replicate
from resnet_jax.data import on_device
from resnet_jax.data.feeds import DeviceFeed
from resnet_jax.models import BasicBlock, ResNet
from resnet_jax.recipe.members import Members
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.rundir import RunDir
from resnet_jax.run.state import create_train_state
from tests.test_experiments import _fake_run

FILL = {  # images_per_sec and compile_s are added below, as benchmarks/fill.py gives them
    "figures": [
        {"net": "resnet20", "mode": "single", "members": 1, "images": 128 * 300, "seconds": 0.9},
        {"net": "resnet56", "mode": "single", "members": 1, "images": 128 * 300, "seconds": 3.0},
        {"net": "resnet20", "mode": "vmap", "members": 4, "images": 4 * 128 * 300, "seconds": 1.2},
        {"net": "resnet56", "mode": "vmap", "members": 4, "images": 4 * 128 * 300, "seconds": 4.5},
        {"net": "resnet20", "mode": "processes", "members": 1, "processes": 4, "images": 1, "seconds": 1},
    ],
    "choice": {"mode": "vmap", "members": 4, "processes": 2, "dtype": "float32"},
}
for _figure in FILL["figures"]:
    _figure.update(images_per_sec=_figure["images"] / _figure["seconds"], compile_s=10.0)


def test_what_is_finished_and_what_the_study_still_needs(tmp_path):
    study = tmp_path / lease_plan.STUDY
    _fake_run(study / "resnet20", [(100, 0.1)])  # the older layout: seed 0
    _fake_run(study / "resnet32_seed0", [(100, 0.1)])
    _fake_run(study / "resnet56_seeds1-2", [(100, 0.1)])
    (study / "resnet44_seed0").mkdir()  # unfinished: no result
    done = lease_plan.finished_seeds(study)
    assert done == {"resnet20": {0}, "resnet32": {0}, "resnet56": {1, 2}}
    item = lease_plan.Study("x", ("resnet20", "resnet32", "resnet44", "resnet56"), (0, 1, 2, 3, 4))
    shape = lease_plan.Shape.from_fill(FILL)
    assert shape == lease_plan.Shape("vmap", 4, 2)
    programs = lease_plan.pending_programs(item, done, shape, carried={"resnet44_seeds2-3"})
    assert [p.run for p in programs] == [
        "resnet20_seeds1-4",  # up to 4 consecutive seeds per program
        "resnet32_seeds1-4",
        "resnet44_seeds0-1",
        "resnet44_seeds2-3",  # the carried run resumes with its own seeds
        "resnet44_seed4",
        "resnet56_seed0",
        "resnet56_seeds3-4",
    ]
    left = lease_plan.next_items(lease_plan.AGENDA, {"fill"}, done)
    assert [i.name for i in left][:2] == ["first seeds", "imagenet_loop"]


def test_the_planner_starts_what_finishes_or_can_be_carried_on_a_fake_clock():
    program = lease_plan.Program("resnet56", (0, 1, 2, 3))
    per_step = lease_plan.step_seconds("resnet56", 4, FILL)
    assert per_step == pytest.approx(4.5 / 300)  # the measured program of 4 members
    assert lease_plan.step_seconds("resnet44", 4, FILL) == pytest.approx((1.2 + (4.5 - 1.2) * 24 / 36) / 300)
    assert lease_plan.step_seconds("resnet20", 1, None) == lease_plan.PRIOR_STEP_S[20]  # no fill yet: the H100's
    whole = lease_plan.estimate_s(program, 0, FILL)
    assert whole == pytest.approx(lease_plan.COMPILE_S + 64_000 * per_step)
    assert lease_plan.should_start(program, 0, whole + 1, FILL, carry_left_mb=0)  # it finishes
    assert lease_plan.should_start(program, 0, whole / 2, FILL, carry_left_mb=40)  # its checkpoint can be carried
    assert not lease_plan.should_start(program, 0, whole / 2, FILL, carry_left_mb=1)
    assert not lease_plan.should_start(program, 63_990, 30, FILL, carry_left_mb=40)  # under the minimum
    assert lease_plan.checkpoint_mb("resnet110", 1) == pytest.approx(1.727e6 * 8 / 2**20, rel=0.02)


def test_what_comes_back_is_at_most_8_files_of_16_mb_and_is_put_back_together(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "MAX_FILE", 1000)
    big = tmp_path / "runs.tar.gz"
    big.write_bytes(bytes(range(256)) * 10)
    parts = lease._split(big)
    assert [p.name for p in parts] == [f"runs.tar.gz.{k}" for k in range(3)] and not big.exists()
    assert all(p.stat().st_size <= 1000 for p in parts)
    assert lease._joined(tmp_path, "runs.tar.gz") == bytes(range(256)) * 10


def test_unpack_merges_the_runs_regenerates_table_6_and_keeps_unfinished_runs_out_of_the_repository(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(lease, "CACHE", tmp_path / "cache")
    work = tmp_path / "work"
    _fake_run(work / lease_plan.STUDY / "resnet32_seed0", [(64_000, 0.09)], config=_study_config("resnet32", 0))
    (work / lease_plan.STUDY / "resnet32_seed0" / "figure7.csv").write_text(
        "net,layer_index,layer,std\nresnet32,1,bn1,0.5\nresnet32,2,layer1_0/bn1,0.4\n"
    )
    partial = work / lease_plan.STUDY / "resnet44_seed0"
    RunDir(partial).create().checkpoint(2000).mkdir(parents=True)
    (RunDir(partial).checkpoint(2000) / "state").write_bytes(b"weights")
    (work / lease_plan.LEASES / "fill").mkdir(parents=True)
    (work / lease_plan.LEASES / "fill" / "fill.json").write_text(json.dumps(FILL))
    back = tmp_path / "back"
    back.mkdir()
    with tarfile.open(back / "runs.tar.gz", "w:gz") as archive:
        archive.add(work / lease_plan.STUDY / "resnet32_seed0", f"{lease_plan.STUDY}/resnet32_seed0")
        archive.add(work / lease_plan.LEASES / "fill", f"{lease_plan.LEASES}/fill")
    with tarfile.open(back / "carry.tar.gz", "w:gz") as archive:
        archive.add(partial, f"{lease_plan.STUDY}/resnet44_seed0")
    (back / "lease.json").write_text(json.dumps({"device_kind": "nvidia_h200", "started": "2026-12-01T10:00:00Z"}))
    results = tmp_path / "results"
    _fake_run(results / lease_plan.STUDY / "resnet20_seed0", [(64_000, 0.12)])

    merged = lease.unpack(back, results)
    assert merged == {"runs": ["resnet32_seed0"], "leases": ["fill"], "carried": ["resnet44_seed0"]}
    table = (results / lease_plan.STUDY / "table6.md").read_text()
    assert "| resnet20 |" in table and "| resnet32 | 0.46M | 1 | 64000 |" in table
    assert (results / lease_plan.STUDY / "figure7.png").exists()
    assert "| resnet32_seed0 | nvidia_h200 | 2026-12-01 |" in (results / lease_plan.STUDY / "RUNS.md").read_text()
    assert json.loads((results / lease_plan.LEASES / "nvidia_h200" / "fill" / "fill.json").read_text()) == FILL
    report = (results / "RESULTS.md").read_text()  # a scratch results folder: its own RESULTS.md
    assert "a GPU lease on nvidia_h200" in report and "| resnet56 | 4 x vmap | float32 |  | 34,133 | 2.67 |" in report
    assert (tmp_path / "cache" / "resnet44_seed0" / "checkpoints" / "2000" / "state").read_bytes() == b"weights"
    assert not (results / lease_plan.STUDY / "resnet44_seed0").exists()  # no checkpoint ever enters the repository


def _study_config(net, seed):
    return {"model": {"name": net, "shortcut": "A"}, "data": {"name": "cifar10"}, "seed": seed, "runs": 1}


def test_every_way_of_sharing_a_device_takes_the_steps_of_the_runs_alone(loop="scan"):
    """A tiny net (8 layers, 8 channels, batch 16): members vmapped, unrolled or mapped, k steps in a scan (the
    accelerators' path, here forced on XLA:CPU), each member's losses those of its seed alone step by step. (Members
    step by step, the CPU's path, are test_train.py's multi-run test.)"""
    from resnet_jax.train.step import make_dispatch

    model = ResNet(
        stage_sizes=(1, 1, 1),
        block_cls=BasicBlock,
        num_classes=10,
        widths=(8, 8, 8),
        stem="cifar",
        shortcut="A",
        bn_group_size=8,
    )
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    arrays = {
        "images": rng.integers(0, 256, (64, 32, 32, 3), np.uint8),
        "labels": rng.integers(0, 10, 64).astype(np.int32),
        "mean": np.full((32, 32, 3), 0.5, np.float32),
        "std": np.ones(3, np.float32),
        "pad": np.zeros(3, np.float32),
    }
    mesh = make_mesh()
    data = on_device.TrainData(replicate(arrays, mesh))

    def losses(members, k, loop):
        feed = DeviceFeed(data, 16, mesh, members.seeds)
        state = create_train_state(model, optimizer, (32, 32, 3), members, mesh)
        dispatch = make_dispatch(model, optimizer, mesh, feed, k, members, loop=loop)
        out = []
        for d in range(8 // k):
            lr = np.full((members.count, k), 0.05, np.float32)
            state, sums = dispatch(state, feed.data, feed.inputs(d * k), members.seeds, lr)
            out.append(np.asarray(sums["loss"]) / np.asarray(sums["examples"]))
        return np.stack(out, axis=1)  # [members, dispatches]

    alone = np.concatenate([losses(Members(seed), 4, "host") for seed in (3, 4)])
    for mode in ("vmap", "unrolled", "map"):
        together = losses(Members(3, 2, mode), 4, loop)
        np.testing.assert_allclose(together, alone, rtol=2e-4, err_msg=f"{mode}, {loop}")
    assert not np.allclose(alone[0], alone[1], rtol=1e-3)  # two seeds, two runs


def test_independent_processes_share_the_device_and_their_images_add_up(tmp_path):
    """The fill measurement's processes figure, on the CPU at tiny sizes: two processes train at once, and the figure
    is the images both trained over the window they shared."""
    import subprocess
    import sys

    from tests.support.training import REPO, env

    figures = json.dumps([{"net": "resnet20", "members": 1, "mode": "processes", "processes": 2}])
    out = tmp_path / "fill.json"
    argv = [sys.executable, "-m", "benchmarks.fill", "--tiny", "--dispatches=1", f"--figures={figures}", f"--out={out}"]
    result = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (figure,) = json.loads(out.read_text())["figures"]
    assert figure["processes"] == 2 and figure["images"] == 2 * 128 * 2  # two processes, one dispatch of 2 steps
    assert figure["images_per_sec"] > 0 and "| 2 processes |" in result.stdout
