"""A GPU lease meets no bug the CPU could have found: the planner on a fake clock and fake results, what comes back
and its unpacking, and every way the lease may share a device, on a tiny net with XLA:CPU on the accelerators' path."""

import json
import tarfile

import numpy as np
import pytest

from experiments import lease, lease_files, lease_plan, lease_unpack
from resnet_jax.core.sharding import make_mesh
from resnet_jax.data.feeds import DeviceFeed
from resnet_jax.data.on_device import TrainData
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
    assert [i.name for i in left][:3] == ["first seeds", "seeds 1 and 2", "imagenet_loop"]


MEASURED = {  # what a lease record holds of its programs (lease.json), as train_program measures them
    "phases": {"install_s": 4.0, "data_s": 31.0},
    "items": [
        {"program": "plain20_seed1", "net": "plain20", "members": 1, "seconds_per_step": 0.0025, "overhead_s": 29.0},
        {"program": "plain32_seed0", "skipped": "would not finish"},
    ],
}


def test_the_planner_starts_only_what_finishes_with_a_margin_at_the_best_known_pace():
    efficiency = lease_plan.LOOP_EFFICIENCY
    # Nothing measured on this kind: the H100's bare step, over the loop's efficiency.
    assert lease_plan.step_seconds("resnet20", 1, None) == pytest.approx(lease_plan.PRIOR_STEP_S[20] / efficiency)
    # A fill: its figure of that many members, over the loop's efficiency; linear in depth between its nets.
    assert lease_plan.step_seconds("resnet56", 4, FILL) == pytest.approx(4.5 / 300 / efficiency)
    assert lease_plan.step_seconds("resnet44", 4, FILL) == pytest.approx((1.2 + 3.3 * 24 / 36) / 300 / efficiency)
    # A program measured on this kind wins; other depths keep the fill's shape at the measured pace.
    measured = lease_plan.paces([MEASURED])
    assert measured == {"step_s": {"plain20x1": 0.0025}, "overhead_s": 29.0, "install_s": 4.0, "data_s": 31.0}
    assert lease_plan.step_seconds("resnet20", 1, FILL, measured) == 0.0025  # plain and residual cost the same
    assert lease_plan.step_seconds("resnet56", 1, FILL, measured) == pytest.approx(0.0025 * 3.0 / 0.9)
    program = lease_plan.Program("resnet20", (1,))
    whole = lease_plan.estimate_s(program, 0, FILL, measured=measured)
    assert whole == pytest.approx(29.0 + 64_000 * 0.0025)
    needed = whole * lease_plan.MARGIN + lease_plan.MARGIN_S
    assert lease_plan.should_start(program, 0, needed + 1, FILL, measured=measured)
    assert not lease_plan.should_start(program, 0, needed - 1, FILL, measured=measured)  # no run started to be cut
    assert not lease_plan.should_start(program, 0, 2 * needed - 30, FILL, measured=measured, processes=2)
    assert lease_plan.should_start(program, 63_000, 120, FILL, measured=measured)  # a resumed run: its steps left
    assert not lease_plan.should_start(program, 63_990, 80, FILL, measured=measured)  # under the minimum
    assert lease_plan.checkpoint_mb("resnet110", 1) == pytest.approx(1.727e6 * 8 / 2**20, rel=0.02)


def test_the_h200_plan_starts_real_work_in_the_first_minute_and_ends_everything_before_the_deadline(tmp_path, capsys):
    results = tmp_path / "results"
    kind = results / lease_plan.LEASES / "nvidia_h200"
    kind.mkdir(parents=True)
    (kind / "2026-12-04T163319Z.json").write_text(json.dumps(MEASURED))  # what --unpack keeps of a lease
    _fake_run(results / lease_plan.STUDY / "plain20_seed0", [(64_000, 0.13)])
    rows = lease.plan_only("nvidia_h200", 585, results)
    deadline = 585 - lease.RESERVE_S
    started = [row for row in rows if "start_s" in row]
    assert started[0]["program"] == "plain32_seed0" and started[0]["start_s"] <= 60  # the first seeds come first
    for row in started:  # every program expected to end before the deadline, with the margin
        assert (
            row["end_s"] + (row["end_s"] - row["start_s"]) * (lease_plan.MARGIN - 1) + lease_plan.MARGIN_S <= deadline
        )
    assert {"item": "first seeds", "program": "resnet32_seed0", "skipped": "would not finish"} in rows
    printed = capsys.readouterr().out
    assert "deadline at 540 s; step times: measured" in printed and "first seeds: plain32_seed0" in printed
    # Nothing measured: the H100's prior, at which no 32-layer net fits, and the first work is a 20-layer seed.
    rows = lease.plan_only("nvidia_h200", 585, tmp_path / "none")
    first = next(row for row in rows if "start_s" in row)
    assert first["program"] == "plain20_seed1" and first["start_s"] <= 60


def test_what_comes_back_is_at_most_8_files_of_16_mb_and_is_put_back_together(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_files, "MAX_FILE", 1000)
    big = tmp_path / "runs.tar.gz"
    big.write_bytes(bytes(range(256)) * 10)
    parts = lease_files.split(big)
    assert [p.name for p in parts] == [f"runs.tar.gz.{k}" for k in range(3)] and not big.exists()
    assert all(p.stat().st_size <= 1000 for p in parts)
    assert lease_files.joined(tmp_path, "runs.tar.gz") == bytes(range(256)) * 10


def test_unpack_merges_the_runs_and_keeps_what_the_next_plan_reads_and_unfinished_runs_out_of_the_repository(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(lease_unpack, "CACHE", tmp_path / "cache")
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
    record = {"device_kind": "nvidia_h200", "started": "2026-12-01T10:00:00Z", **MEASURED}
    (back / "lease.json").write_text(json.dumps(record))
    results = tmp_path / "results"
    _fake_run(results / lease_plan.STUDY / "resnet20_seed0", [(64_000, 0.12)])

    merged = lease_unpack.unpack(back, results)
    assert merged == {"runs": ["resnet32_seed0"], "leases": ["fill"], "carried": ["resnet44_seed0"]}
    table = (results / lease_plan.STUDY / "table6.md").read_text()
    assert "| resnet20 |" in table and "| resnet32 | 0.46M | full | float32 | 1 | 64000 |" in table
    assert (results / lease_plan.STUDY / "figure7.png").exists()
    assert "| resnet32_seed0 | nvidia_h200 | 2026-12-01 |" in (results / lease_plan.STUDY / "RUNS.md").read_text()
    assert json.loads((results / lease_plan.LEASES / "nvidia_h200" / "fill" / "fill.json").read_text()) == FILL
    report = (results / "RESULTS.md").read_text()  # a scratch results folder: its own RESULTS.md
    assert "a GPU lease on nvidia_h200" in report and "| resnet56 | 4 x vmap | float32 |  | 34,133 | 2.67 |" in report
    assert (tmp_path / "cache" / "resnet44_seed0" / "checkpoints" / "2000" / "state").read_bytes() == b"weights"
    assert not (results / lease_plan.STUDY / "resnet44_seed0").exists()  # no checkpoint ever enters the repository
    # The next lease's plan reads what was kept: the fill, and the paces of this lease's programs.
    _, done_items, _, fill, measured = lease.plan_inputs("nvidia_h200", results)
    assert fill == FILL and "fill" in done_items
    assert measured["step_s"] == {"plain20x1": 0.0025} and measured["data_s"] == 31.0
    # A fill cut short (figures it did not reach) is kept, but measured again when the agenda reaches it.
    cut = {**FILL, "not_measured": [{"net": "resnet20", "members": 4, "mode": "vmap"}]}
    (results / lease_plan.LEASES / "nvidia_h200" / "fill" / "fill.json").write_text(json.dumps(cut))
    assert "fill" not in lease.plan_inputs("nvidia_h200", results)[1]


def test_a_lease_section_goes_above_the_newest_one_under_the_title(tmp_path):
    """RESULTS.md is newest first: a lease's section enters under the title and preamble, above the sections there."""
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\nNewest first.\n\n## 2026-11-30, older\n\nold text\n")
    record = {"device_kind": "nvidia_h200", "started": "2026-12-01T10:00:00Z", "phases": {"setup_s": 12.0}}
    lease_unpack._results_md(results_md, record, None, {"leases": []})
    text = results_md.read_text()
    assert text.startswith("# Benchmark results\n\nNewest first.\n\n## 2026-12-01, a GPU lease on nvidia_h200")
    assert text.index("| setup | 12 |") < text.index("## 2026-11-30, older") and text.endswith("old text\n")
    empty = tmp_path / "scratch" / "RESULTS.md"  # a scratch results folder starts without one
    lease_unpack._results_md(empty, record, None, {"leases": []})
    assert empty.read_text().startswith("## 2026-12-01, a GPU lease")


def test_a_lease_cut_by_sigkill_in_its_second_program_has_sent_back_the_first(tmp_path, monkeypatch):
    """The lease machinery with stand-in programs (tests/support/fake_lease.py): killed with SIGKILL while its second
    program runs, its --out already holds the first run with its log, and --unpack merges it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.support.training import REPO, env

    out, work = tmp_path / "out", tmp_path / "work"
    argv = [sys.executable, "-m", "tests.support.fake_lease", str(out), str(work)]
    process = subprocess.Popen(argv, cwd=REPO, env=env(), start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while "resnet20_seed0: started" not in _text(out / "lease.log"):
            assert process.poll() is None and time.time() < deadline, _text(out / "lease.log")
            time.sleep(0.2)
        time.sleep(1.0)  # the second program is training
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert "ended" not in process.stdout.read()  # killed, not ended: no end-of-lease archive was made
    with tarfile.open(out / "runs.tar.gz") as archive:
        names = archive.getnames()
    assert f"{lease_plan.STUDY}/plain20_seed0/result.json" in names
    assert f"{lease_plan.STUDY}/plain20_seed0/metrics.jsonl" in names
    assert not any("checkpoints" in name or "resnet20" in name for name in names)
    with tarfile.open(out / "logs.tar.gz") as archive:
        assert b"trained plain20_seed0" in archive.extractfile("logs/plain20_seed0.log").read()
    record = json.loads((out / "lease.json").read_text())
    assert record["finished"] == ["plain20_seed0"] and record["items"][0]["seconds_per_step"] == 0.01
    monkeypatch.setattr(lease_unpack, "CACHE", tmp_path / "cache")
    merged = lease_unpack.unpack(out, tmp_path / "results")
    assert merged["runs"] == ["plain20_seed0"]
    assert (tmp_path / "results" / lease_plan.STUDY / "plain20_seed0" / "result.json").exists()
    assert (tmp_path / "results" / lease_plan.LEASES / "fake" / "logs").is_dir()


def _text(path):
    return path.read_text() if path.exists() else ""


def test_a_run_cut_short_is_carried_with_its_newest_checkpoint_only(tmp_path):
    run = tmp_path / "resnet44_seed0"
    for step in (2000, 4000):
        (run / "checkpoints" / str(step)).mkdir(parents=True)
        (run / "checkpoints" / str(step) / "state").write_bytes(b"x" * 1000)
    (run / "metrics.jsonl").write_text("{}\n")
    with tarfile.open(tmp_path / "carry.tar.gz", "w:gz") as archive:
        archive.add(run, "resnet44_seed0", filter=lease._newest_checkpoint_only(run))
    with tarfile.open(tmp_path / "carry.tar.gz") as archive:
        names = archive.getnames()
    assert "resnet44_seed0/checkpoints/4000/state" in names and "resnet44_seed0/metrics.jsonl" in names
    assert not any("2000" in name for name in names)
    assert lease._size_mb(run, newest_checkpoint_only=True) * 2**20 == pytest.approx(1003)


def test_a_kit_for_another_python_stops_the_lease_in_one_line_within_seconds(tmp_path):
    import subprocess
    import sys
    import time

    from tests.support.training import REPO

    (tmp_path / "kit.json").write_text(json.dumps({"python": "3.99"}))
    started = time.perf_counter()
    argv = [sys.executable, "-m", "experiments.lease_preflight", f"--kit={tmp_path}"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and time.perf_counter() - started < 10
    first, verdict = result.stdout.strip().splitlines()
    assert first.startswith("preflight: {") and json.loads(first.removeprefix("preflight: "))["python"]
    assert verdict.startswith("preflight: Python 3.") and "for Python 3.99" in verdict and "lease_kit" in verdict
    (tmp_path / "kit.json").write_text(json.dumps({"python": ".".join(sys.version.split(".")[:2])}))
    assert subprocess.run(argv, cwd=REPO, capture_output=True, timeout=60).returncode == 0


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
    mesh = make_mesh()
    data = TrainData.random(64, seed=0, mesh=mesh)

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


def test_the_fill_s_workers_share_the_memory_its_own_process_leaves(monkeypatch):
    from benchmarks import fill

    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the fill's own process: only what it uses
    monkeypatch.setenv("XLA_FLAGS", "--a")
    env = fill.worker_env(4, "--b")
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in env and env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.200"
    assert env["XLA_FLAGS"] == "--a --b"


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
