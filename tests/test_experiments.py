"""The experiment scripts on small fake runs: job splitting, resume, and collecting tables and figures."""

import json
import re
import subprocess
import sys
from pathlib import Path

import flax
import numpy as np
import pytest
from PIL import Image

from configs import cifar10
from experiments import cifar_depth_study as study
from experiments import imagenet_tables, paper, run_names
from resnet_jax.core.errors import ConfigError, UserError
from resnet_jax.recipe.members import Members
from resnet_jax.run.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


_CONFIG = {"model": {"name": "resnet20", "shortcut": "A"}, "data": {"name": "cifar10"}}


def _fake_run(
    run_dir: Path,
    evals: list[tuple[int, float]],
    train_error: float = 0.05,
    config: dict | None = None,
    result: dict | None = None,
) -> None:
    """A workdir as resnet_jax.main leaves it: metrics.jsonl, config.json and result.json."""
    run_dir.mkdir(parents=True)
    records = []
    for step, error in evals:
        train = {"loss": 1.0, "error": train_error + step * 1e-6, "learning_rate": 0.1, "images_per_sec": 1.0}
        records.append({"step": step, "kind": "train", **train})
        records.append({"step": step, "kind": "eval", "top1_error": error, "top5_error": error / 5, "examples": 10000})
    written = RunDir(run_dir)
    written.write_metrics(records)
    written.config_path.write_text(json.dumps(config or _CONFIG))
    written.write_result(result or {"top1_error": evals[-1][1]})


def test_jobs_split_the_nets_exactly_once():
    nets = study.study_nets(None, quick=False, with_1202=True)
    assert nets[-1] == "resnet1202" and len(nets) == 11
    for num_jobs in (1, 3, 4, 11, 20):
        parts = [study.nets_for_job(nets, i, num_jobs) for i in range(num_jobs)]
        assert sorted(n for part in parts for n in part) == sorted(nets)
    with pytest.raises(ConfigError, match="job_index"):
        study.nets_for_job(nets, 3, 3)
    with pytest.raises(ConfigError, match="unknown nets"):
        study.study_nets(["resnet50"], quick=False, with_1202=False)
    with pytest.raises(ConfigError, match="without quick"):  # a fraction is not dropped for the quick schedule
        study.net_config("resnet20", quick=True, schedule_fraction="1/8")
    assert study.study_nets(None, quick=True, with_1202=False) == list(study.QUICK_NETS)


def test_finished_nets_are_skipped_and_unfinished_ones_run(tmp_path):
    _fake_run(tmp_path / "plain20_seed0", [(100, 0.5)])
    RunDir(tmp_path / "resnet20_seed0").checkpoint(50).mkdir(parents=True)  # interrupted: checkpoints, no result
    calls = []

    def fake_train(config, workdir):
        calls.append((config.model.name, workdir))
        return {"top1_error": 0.1}

    assert study.run_nets(tmp_path, ["plain20", "resnet20", "plain56"], study.net_config, fake_train)
    assert calls == [("resnet20", str(tmp_path / "resnet20_seed0")), ("plain56", str(tmp_path / "plain56_seed0"))]
    # a preempted net stops the job, so the scheduler can restart it
    assert not study.run_nets(tmp_path, ["resnet56", "resnet110"], study.net_config, lambda c, w: {})
    seeds_1_2 = study.net_config("resnet56", runs=2, first_seed=1)
    assert run_names.run_name("resnet56", Members.from_config(seeds_1_2).seeds) == "resnet56_seeds1-2"


def test_run_folder_names_are_written_and_read_in_one_place():
    for net, seeds in (("resnet110", (0,)), ("plain56", (1, 2, 3))):
        assert run_names.parse_run_name(run_names.run_name(net, seeds)) == (net, seeds)
    assert run_names.parse_run_name("resnet20") == ("resnet20", (0,))  # the older layout: one run, seed 0
    assert (
        run_names.parse_run_name("figure7.png") is None and run_names.parse_run_name(".resnet20_seed0.partial") is None
    )


def test_each_finished_run_is_published_without_checkpoints_with_its_figure_7_as_it_ends(tmp_path, monkeypatch):
    from experiments import layer_responses

    def responses(workdir, net):  # the measurement needs the trained net's checkpoint: its file, as the real one writes
        assert (Path(workdir) / "checkpoints").is_dir(), f"no checkpoint to measure in {workdir}"
        (Path(workdir) / "figure7.csv").write_text(f"net,layer_index,layer,std\n{net},1,bn1,0.5\n{net},2,x/bn1,0.4\n")

    monkeypatch.setattr(layer_responses, "write_run_responses", responses)
    work, published = tmp_path / "work", tmp_path / "results"
    published.mkdir()
    eighth = {**_CONFIG, "schedule_fraction": 0.125}

    def fake_train(config, workdir):
        _fake_run(Path(workdir), [(8000, 0.2)], config={**eighth, "model": {"name": config.model.name}})
        (Path(workdir) / "checkpoints" / "8000").mkdir(parents=True)
        (Path(workdir) / "damaged_checkpoints" / "20261205T000000Z" / "4000").mkdir(parents=True)
        (Path(workdir) / "tensorboard").mkdir()
        return {"top1_error": 0.2}

    def finished(net, run_dir):
        study.publish(net, run_dir, published, ["plain56", "plain20"])

    assert study.run_nets(work, ["plain56", "plain20"], study.net_config, fake_train, finished)
    assert sorted(p.name for p in published.iterdir() if p.is_dir()) == ["plain20_seed0", "plain56_seed0"]
    assert (published / "plain56_seed0" / "figure7.csv").exists() and (published / "figure7.png").exists()
    assert not [p for p in published.rglob("*") if "checkpoints" in p.name or p.name == "tensorboard"]
    assert "| plain56 | 0.85M | 1/8 | float32 | 1 | 8000 |" in (published / "table6.md").read_text()
    # A later command with other nets: the table keeps those published before.
    assert study.run_nets(work, ["resnet20"], study.net_config, fake_train, finished)
    table = (published / "table6.md").read_text()
    assert all(f"| {net} |" in table for net in ("plain20", "plain56", "resnet20"))
    (published / "plain56_seed0" / "result.json").write_text("{}")  # published once: a rerun leaves it as it is
    assert study.run_nets(work, ["plain56", "plain20"], study.net_config, fake_train, finished)
    assert (published / "plain56_seed0" / "result.json").read_text() == "{}"
    # A command stopped after publishing a run but before redrawing the table: the next one redraws it.
    (published / "table6.md").unlink()
    (published / "table6.csv").unlink()
    assert study.run_nets(work, ["plain20"], study.net_config, fake_train, finished)
    assert "| plain20 |" in (published / "table6.md").read_text()


def test_a_runs_pace_is_read_from_its_logs_counting_a_redone_window_once(tmp_path):
    from benchmarks import study_pace

    run = RunDir(tmp_path / "plain20_seed0").create()
    run.config_path.write_text(json.dumps({**_CONFIG, "batch_size": 100, "model": {"name": "plain20"}}))
    windows = [(100, 500.0), (200, 100.0), (300, 400.0), (200, 300.0), (400, 200.0)]  # 200 redone after a resume
    run.metrics_path.write_text(
        "".join(json.dumps({"step": s, "kind": "train", "images_per_sec": r}) + "\n" for s, r in windows)
    )
    (row,) = study_pace.run_pace(run.path)
    assert row["median_img_s"] == 350 and row["p90_img_s"] == 470  # of 500, 300, 400, 200: numpy's linear rule
    assert row["minutes_at_median"] == round(400 * 100 / 350 / 60, 1) and row["machines"] == ["not recorded"]
    assert row["minutes_of_windows"] == round(100 * 100 * (1 / 500 + 1 / 300 + 1 / 400 + 1 / 200) / 60, 1)
    assert study_pace.run_pace(run.path, from_step=200)[0]["median_img_s"] == 300


def test_quick_config_keeps_the_schedule_shape_and_runs_are_passed_on():
    config = study.net_config("resnet110", quick=True, data_dir="/d", prepare_from=None, batch_size=None)
    quick = cifar10.get_config("resnet110,quick")
    assert config.num_steps == quick.num_steps < 64_000 and config.schedule.boundaries == quick.schedule.boundaries
    assert config.schedule.warmup_lr == 0.01 and config.batch_size == 128 and config.data.data_dir == "/d"
    five = study.net_config("resnet110", runs=5, steps_per_dispatch=50)
    assert five.runs == 5 and five.num_steps == 64_000 and five.steps_per_dispatch == 50


def test_collect_reports_the_final_not_the_best_epoch_and_the_spread_over_seeds_of_all_runs(tmp_path):
    _fake_run(tmp_path / "resnet20", [(100, 0.30), (200, 0.08), (300, 0.09)], result={"parameters": 269_722})
    _fake_run(tmp_path / "plain20_seed0", [(100, 0.40), (300, 0.12)], train_error=0.1)
    _fake_run(tmp_path / "resnet110_seed0", [(300, 0.07)])  # seed 0 in one run (one lease) ...
    RunDir(tmp_path / "resnet110_seeds1-2").create()  # ... seeds 1 and 2 trained together in another
    RunDir(tmp_path / "resnet110_seeds1-2").config_path.write_text(json.dumps({**_CONFIG, "runs": 2, "seed": 1}))
    RunDir(tmp_path / "resnet110_seeds1-2").write_result({})
    for seed, error in ((1, 0.065), (2, 0.08)):
        _fake_run(tmp_path / "resnet110_seeds1-2" / f"seed{seed}", [(300, error)])
    _fake_run(tmp_path / "resnet56_seed0", [(300, 0.1)])
    RunDir(tmp_path / "resnet56_seed0").result_path.unlink()  # unfinished: not in the table
    rows = study.collect(tmp_path, ["plain20", "resnet20", "resnet56", "resnet110"])
    assert [r["net"] for r in rows] == ["plain20", "resnet20", "resnet110"]
    assert rows[1]["test_error_mean"] == 9.0 and rows[1]["paper_test_error"] == 8.75 and rows[1]["runs"] == 1
    assert rows[2]["runs"] == 3 and rows[2]["test_error_mean"] == 7.17 and rows[2]["test_error_std"] == 0.76
    assert rows[2]["test_error_best"] == 6.5 and rows[2]["paper_test_error"] == 6.43
    table = (tmp_path / "table6.md").read_text()
    # the last training window's error, in %
    assert "| resnet20 | 0.27M | full | float32 | 1 | 300 | 5.03 | 9.00 | 9.00 | 8.75 |" in table
    assert "| resnet110 | 1.73M | full | float32 | 3 | 300 | 5.03 | 7.17 +- 0.76 | 6.50 | 6.43 |" in table
    assert (tmp_path / "table6.csv").read_text().splitlines()[0] == ",".join(study.FIELDS)
    assert (tmp_path / "figure6.png").stat().st_size > 10_000
    _fake_run(tmp_path / "resnet110_seeds2-3", [(300, 0.07)], config={**_CONFIG, "runs": 2, "seed": 2})
    with pytest.raises(UserError, match=r"resnet110: seeds \[2\] were trained in more than one run"):
        study.collect(tmp_path, ["resnet110"])


def test_figure6_keeps_the_papers_axis_for_converged_nets_and_a_readable_one_for_short_schedules():
    assert study.error_axis_top([6.6, 7.5]) == 20  # the paper's 0-20%
    assert study.error_axis_top([15.6, 16.9]) == 40  # 1/8: the ResNets' one-point differences stay visible
    assert study.error_axis_top([17.9, 54.4]) == 100  # every curve fits
    assert study.error_axis_top([16.1, float("nan")]) == 100  # a diverged net: the whole range, no crash


def test_a_scaled_schedule_scales_every_iteration_count_and_nothing_else():
    full = cifar10.get_config("plain56")
    eighth = study.net_config("plain56", schedule_fraction="1/8")
    assert (eighth.num_steps, eighth.schedule.boundaries) == (8_000, (4_000, 6_000))
    assert eighth.eval.every_steps == eighth.checkpoint_every_steps == 250  # 32 of each, as in the paper's run
    assert eighth.steps_per_dispatch == 50 and eighth.schedule_fraction == 0.125 and full.schedule_fraction == 1.0
    same = ("num_steps", "schedule", "eval", "checkpoint_every_steps", "steps_per_dispatch", "schedule_fraction")
    assert {k: v for k, v in eighth.items() if k not in same} == {k: v for k, v in full.items() if k not in same}
    assert eighth.schedule.base_lr == 0.1 and eighth.schedule.ramp_steps == full.schedule.ramp_steps
    assert cifar10.get_config("resnet110,fraction=1/4").schedule.warmup_lr == 0.01  # the warm-up stays
    with pytest.raises(ValueError, match="fraction=1/3 must be in"):
        cifar10.get_config("plain56,fraction=1/3")  # 21,333.3 iterations
    with pytest.raises(ValueError, match="without quick"):
        cifar10.get_config("plain56,quick,fraction=1/8")


def test_tables_and_figures_are_labelled_with_their_fraction_and_never_mix_two(tmp_path):
    eighth = {**_CONFIG, "schedule_fraction": 0.125}
    _fake_run(tmp_path / "resnet20_seed0", [(4000, 0.2), (8000, 0.12)], config=eighth)
    _fake_run(tmp_path / "plain20_seed0", [(8000, 0.14)], config={**eighth, "model": {"name": "plain20"}})
    rows = study.collect(tmp_path, ["plain20", "resnet20"])
    assert [r["schedule"] for r in rows] == ["1/8", "1/8"]
    assert "| resnet20 | 0.27M | 1/8 | float32 | 1 | 8000 |" in (tmp_path / "table6.md").read_text()
    assert study.study_label(tmp_path, ["plain20", "resnet20"]) == "1/8 schedule"
    _fake_run(tmp_path / "resnet20_seed1", [(64_000, 0.11)])  # the full schedule (no fraction recorded: 1)
    with pytest.raises(UserError, match="different schedule fractions.*resnet20_seed0 1/8.*resnet20_seed1 full"):
        study.collect(tmp_path, ["plain20", "resnet20"])


def test_tables_and_figures_are_labelled_with_their_precision_and_never_mix_two(tmp_path):
    bf16 = {**_CONFIG, "model": {**_CONFIG["model"], "dtype": "bfloat16"}}
    assert study.net_config("resnet20", dtype="bfloat16").model.dtype == "bfloat16"
    _fake_run(tmp_path / "resnet20_seed0", [(64_000, 0.12)], config=bf16)
    (row,) = study.collect(tmp_path, ["resnet20"])
    assert (
        row["precision"] == "bfloat16"
        and "| resnet20 | 0.27M | full | bfloat16 | 1 |" in (tmp_path / "table6.md").read_text()
    )
    assert study.study_label(tmp_path, ["resnet20"]) == "bfloat16"
    _fake_run(tmp_path / "resnet20_seed1", [(64_000, 0.11)])  # float32, the default
    with pytest.raises(UserError, match="different precisions.*resnet20_seed0 bfloat16.*resnet20_seed1 float32"):
        study.collect(tmp_path, ["resnet20"])


def test_runs_that_could_not_join_the_table_are_refused_before_training(tmp_path):
    work, published = tmp_path / "work", tmp_path / "results"
    eighth = {**_CONFIG, "schedule_fraction": 0.125}
    _fake_run(work / "plain20_seed0", [(8000, 0.2)], config={**eighth, "model": {"name": "plain20"}})
    _fake_run(published / "resnet20_seeds0-2", [(8000, 0.2)], config={**eighth, "runs": 3})
    for seed in (0, 1, 2):
        _fake_run(published / "resnet20_seeds0-2" / f"seed{seed}", [(8000, 0.2)])

    def plan(nets, **options):
        study.check_plan([work, published], nets, lambda net: study.net_config(net, **options))

    plan(["plain20", "resnet56"], schedule_fraction="1/8")  # the finished run itself, and another net: fine
    plan(["resnet20"], schedule_fraction="1/8", runs=3)  # the same run, to be skipped as finished
    plan(["resnet20"], schedule_fraction="1/8", first_seed=3)
    with pytest.raises(UserError, match="work holds finished runs of the 1/8 schedule in float32; resnet56 would be "):
        plan(["resnet56"])
    with pytest.raises(UserError, match="of the 1/8 schedule in bfloat16"):
        plan(["resnet56"], schedule_fraction="1/8", dtype="bfloat16")
    with pytest.raises(UserError, match="results already holds finished runs of resnet20 with seeds \\[1, 2\\]"):
        plan(["resnet20"], schedule_fraction="1/8", first_seed=1, runs=2)


def test_print_commands_gives_one_line_per_net(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.cifar_depth_study", f"--workdir={tmp_path}", "--quick", "--print_commands"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == len(study.QUICK_NETS)
    for line, net in zip(lines, study.QUICK_NETS, strict=True):
        assert line.endswith(f"--nets={net}") and "--quick" in line and "-m experiments.cifar_depth_study" in line


def test_figure7_cuts_its_axis_only_for_a_few_layers_far_above_the_rest():
    from experiments.layer_responses import std_axis_top

    converged = {"plain20": [0.9, 0.8, 0.7, 1.7], "resnet56": [0.4, 0.35, 0.3, 0.5]}  # the full schedule's shape
    assert std_axis_top(converged) is None
    short = {"plain56": [9.9, 5.1, 0.7, 0.7] + [0.7] * 40, "resnet56": [0.7] * 56}  # plain-56 at 1/8
    assert std_axis_top(short) == 1.5  # twice the 95th percentile (0.7), to 0.5 above: the rest fills the axis
    assert std_axis_top({}) is None and std_axis_top({"plain20": [float("nan")]}) is None  # nothing to cut


def test_a_study_folders_figure7_takes_each_nets_lowest_seed_whatever_the_folder_layout(tmp_path):
    from experiments.layer_responses import study_figure7

    for folder, std in (("resnet20_seed1", 0.9), ("resnet20", 0.4), ("plain20_seeds2-3", 0.8), ("plain20_seed4", 0.1)):
        (tmp_path / folder).mkdir()
        net = folder.split("_")[0]
        (tmp_path / folder / "figure7.csv").write_text(f"net,layer_index,layer,std\n{net},1,bn1,{std}\n")
    study_figure7(tmp_path)
    lines = (tmp_path / "figure7.csv").read_text().splitlines()[1:]
    assert lines == ["plain20,1,bn1,0.800000", "resnet20,1,bn1,0.400000"]


def test_a_study_folders_figures_are_headed_with_its_schedule(tmp_path, monkeypatch):
    from resnet_jax.run import plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=0: drawn.update({Path(path).name: fig}))
    eighth = {**_CONFIG, "schedule_fraction": 0.125}
    _fake_run(tmp_path / "resnet20_seed0", [(8000, 0.12)], config=eighth)
    (tmp_path / "resnet20_seed0" / "figure7.csv").write_text("net,layer_index,layer,std\nresnet20,1,bn1,0.5\n")
    study.collect(tmp_path, ["resnet20"])
    assert drawn["figure7.png"].get_suptitle() == "layer responses (1/8 schedule)"
    assert drawn["figure6.png"].axes[0].get_title() == "ResNets, 1/8 schedule"
    (tmp_path / "resnet20_seed0" / "config.json").write_text(json.dumps(_CONFIG))  # the paper's schedule: no heading
    study.collect(tmp_path, ["resnet20"])
    assert drawn["figure7.png"].get_suptitle() == "" and drawn["figure6.png"].axes[0].get_title() == "ResNets"


def test_figure7_redrawn_from_earlier_csvs_keeps_layer_order(tmp_path):
    (tmp_path / "a.csv").write_text("net,layer_index,layer,std\nplain20,2,layer1_0/bn1,0.5\nplain20,1,bn1,0.7\n")
    (tmp_path / "b.csv").write_text("net,layer_index,layer,std\nresnet56,1,bn1,0.3\n")

    def redraw(*csvs):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.layer_responses",
                f"--from_csv={','.join(csvs)}",
                f"--output={tmp_path / 'fig7'}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = redraw(str(tmp_path / "a.csv"), str(tmp_path / "b.csv"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "fig7.csv").read_text().splitlines()[1:] == [
        "plain20,1,bn1,0.700000",
        "plain20,2,layer1_0/bn1,0.500000",
        "resnet56,1,bn1,0.300000",
    ]
    assert (tmp_path / "fig7.png").stat().st_size > 0
    twice = redraw(str(tmp_path / "a.csv"), str(tmp_path / "a.csv"))
    assert twice.returncode != 0 and "Nets ['plain20'] appear more than once" in twice.stderr


def test_imagenet_tables_put_each_run_in_its_rows(tmp_path):
    def config(model, shortcut):
        return {"model": {"name": model, "shortcut": shortcut}, "data": {"name": "imagenet2012"}}

    _fake_run(
        tmp_path / "r34a",
        [(1, 0.2)],
        config=config("resnet34", "A"),
        result={"top1_error": 0.2503, "top5_error": 0.0776, "protocol": "10crop"},
    )
    _fake_run(
        tmp_path / "r50",
        [(1, 0.2)],
        config=config("resnet50", "B"),
        result={"top1_error": 0.2285, "top5_error": 0.0671, "protocol": "10crop"},
    )
    RunDir(tmp_path / "r50").write_evaluation(
        600_000, {"protocol": "multiscale", "split": "validation", "top1_error": 0.2074, "top5_error": 0.0525}
    )
    markdown = imagenet_tables.tables_markdown([str(tmp_path / "r34a"), str(tmp_path / "r50")])
    table2, table3, table4 = markdown.split("### ")[1:]
    assert "| resnet34 | A | 25.03 / 7.76 | 25.03 |" in table2  # Table 2 gives only top-1 in the paper
    assert "| resnet18 | A | not run | 27.88 |" in table2
    assert "| resnet50 | B | 22.85 / 6.71 | 22.85 / 6.71 |" in table3
    assert "| resnet50 | B | 20.74 / 5.25 | 20.74 / 5.25 |" in table4
    assert "| resnet34 | B | not run |" in table4


def test_the_independent_pytorch_trainer_builds_the_papers_nets():
    """experiments/torch_cifar_reference.py, written from the paper alone, has Table 6's parameter counts."""
    pytest.importorskip("torch")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.torch_cifar_reference", "--param_counts"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    counts = {int(m[1]): int(m[2].replace(",", "")) for m in re.finditer(r"ResNet-(\d+): ([\d,]+)", result.stdout)}
    for depth, count in counts.items():
        paper_millions = paper.value("Table 6", f"resnet{depth}", "parameters") / 1e6
        assert round(count / 1e6, 2 if count < 1e6 else 1) == paper_millions
    assert counts[20] == 269_722 and set(counts) == {20, 32, 44, 56, 110, 1202}


def test_the_data_control_pairs_each_lossless_image_with_its_jpeg_copy(tmp_path):
    from experiments import data_control

    if not (data_control.SHARED / "cifar-10-images-jpg.tar.gz").exists():
        pytest.skip("the shared CIFAR-10 files are absent")
    sources = data_control.build_sources(data_control.SHARED, tmp_path)
    names = {r: sorted(p.relative_to(s).with_suffix("") for p in s.rglob("*.*g")) for r, s in sources.items()}
    assert names["lossless"] == names["jpeg"] and len(names["jpeg"]) == 6 * 1017
    assert sum(1 for n in names["jpeg"] if n.parts[0] == "test") == 1017
    originals = np.load(data_control.SHARED / "cifar10_original_labels_and_lossless_prefix.npz")
    png = np.asarray(Image.open(sources["lossless"] / "train" / "frog" / "data_batch_1_0000.png"))
    np.testing.assert_array_equal(png, originals["data_batch_1_data_prefix"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    jpeg = np.asarray(Image.open(sources["jpeg"] / "train" / "frog" / "data_batch_1_0000.jpg")).astype(int)
    assert 2 < np.abs(jpeg - png).mean() < 20  # the same image, re-encoded at q75

    config = data_control.control_config(tmp_path, epochs=164, runs=3)
    assert config.num_steps == 6500 and config.schedule.boundaries == (3250, 4875) and config.runs == 3
    config.data.on_device = True
    from resnet_jax.recipe.config import validate

    validate(config)


def test_figure_7_with_batch_statistics_measures_each_bn_scale_and_with_moving_ones_the_tested_net(
    cifar_slice_data_dir, tmp_path
):
    from experiments.layer_responses import layer_response_stds
    from resnet_jax.run.load import load_run
    from resnet_jax.train.loop import train_and_evaluate
    from tests.support.training import small_config

    train_and_evaluate(small_config(cifar_slice_data_dir, num_steps=2), str(tmp_path))
    _, _, state = load_run(tmp_path)
    scales = {  # each BN's mean |scale|, by the layer name Figure 7 gives it
        "/".join(path[:-1]): float(np.mean(np.abs(np.asarray(value))))
        for path, value in flax.traverse_util.flatten_dict(state.params).items()
        if path[-1] == "scale"
    }
    batch = dict(layer_response_stds(str(tmp_path), statistics="batch"))
    moving = dict(layer_response_stds(str(tmp_path)))
    assert batch.keys() == moving.keys() and len(batch) == 19  # ResNet-20's 3x3 layers
    # Normalised by each group's own statistics, a channel's std over the test set is its BN's |scale|.
    for layer, std in batch.items():
        assert std == pytest.approx(scales[layer], rel=2e-3), layer
    # Two steps leave the moving averages near their initial values (momentum 0.9): the tested net responds otherwise.
    assert max(abs(moving[k] - batch[k]) / batch[k] for k in batch) > 0.1
    with pytest.raises(UserError, match="statistics='train'"):
        layer_response_stds(str(tmp_path), statistics="train")
