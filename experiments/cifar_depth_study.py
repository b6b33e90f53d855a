"""The CIFAR-10 depth study of Section 4.2: Table 6 and Figure 6, with several runs (seeds) per net.

    python -m experiments.cifar_depth_study --workdir=workdirs/depth_study --runs=3           # all nets, in turn
    python -m experiments.cifar_depth_study --workdir=... --nets=resnet110 --runs=5             # the paper's 5 runs
    python -m experiments.cifar_depth_study --workdir=... --first_seed=1 --runs=2               # more seeds later
    python -m experiments.cifar_depth_study --workdir=... --job_index=3 --num_jobs=10           # one slice (array job)
    python -m experiments.cifar_depth_study --workdir=... --print_commands                     # one line per net
    python -m experiments.cifar_depth_study --workdir=... --collect                            # tables, figures only
    python -m experiments.cifar_depth_study --workdir=... --quick                              # minutes on a CPU
    python -m experiments.cifar_depth_study --workdir=... --schedule_fraction=1/8              # 8k iterations each
    python -m experiments.cifar_depth_study --workdir=... --publish=results/...                # logs, as each ends

Each net trains with configs/cifar10.py on the paper's schedule (64k iterations) in `<workdir>/<net>_seed<s>` (one
seed) or `<workdir>/<net>_seeds<a>-<b>` (seeds a..b, trained together in one program, `config.runs`, each in its
`seed<s>/`). A finished run (one with result.json) is not run again and an interrupted one resumes from its
checkpoint, so the same command can be rerun until everything is done. A net's seeds may come from several runs (and
leases): the table takes every finished seed of every run of the net in the workdir (and a run named `<net>`, the
layout before seeds were added later), and reports each net's final test error (the last evaluation, never the best
one): the mean +- standard deviation and the best over seeds, beside Table 6 (docs/paper.md); Figure 6 draws the
mean curves of the seeds, plain nets and ResNets in two panels as in the paper. `--schedule_fraction=F` runs the
paper's recipe with every iteration count times F (configs/cifar10.py's `fraction=F`); the fraction is recorded in
each run's config.json and result.json, labels the table and figure, and runs of different fractions are never
mixed: a workdir holds one fraction (the table refuses a mix, a resumed run refuses another fraction). The same
holds for `--dtype` (float32, the paper's, by default; bfloat16 for a precision control), recorded as `model.dtype`.
`--publish=DIR` copies each run, as soon as it has finished, into DIR without its checkpoints (config.json,
metrics.jsonl, result.json, curves), with Figure 7's per-layer statistics measured on it (figure7.csv), and
regenerates Table 6 and Figures 6 and 7 there: a batch job that stops leaves everything it finished ready to commit.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
from absl import flags, logging

from configs import cifar10
from experiments import paper
from experiments.run_names import parse_run_name, run_name
from resnet_jax.core import cli
from resnet_jax.core.errors import ConfigError, UserError
from resnet_jax.core.files import write_atomically
from resnet_jax.recipe.members import Members
from resnet_jax.run.rundir import LOCAL_ONLY, RunDir

DEFAULT_NETS = cifar10.DEPTH_STUDY
QUICK_NETS = ("plain20", "plain56", "resnet20", "resnet56")

FLAGS = flags.FLAGS


def _define_flags() -> None:  # at run time, not at import: scripts import each other's functions
    flags.DEFINE_string("workdir", None, "Directory holding one run directory per net.", required=True)
    flags.DEFINE_list(
        "nets", None, f"Nets to run (default: {', '.join(DEFAULT_NETS)}; with --quick: {', '.join(QUICK_NETS)})."
    )
    flags.DEFINE_bool("with_1202", False, "Also run ResNet-1202 (19.4M parameters, slow).")
    flags.DEFINE_integer(
        "runs", 1, "Runs (seeds first_seed..first_seed+runs-1) per net, trained together in one program."
    )
    flags.DEFINE_integer("first_seed", 0, "The first of the runs' seeds.")
    flags.DEFINE_bool(
        "quick",
        False,
        "configs/cifar10.py's quick schedule (400 iterations, minutes on a 2-core CPU per net) instead of 64k.",
    )
    flags.DEFINE_string(
        "schedule_fraction", None, "Every iteration count of the paper's schedule times this (1/8: 8k iterations)."
    )
    flags.DEFINE_integer("job_index", 0, "This job's index in an array job.")
    flags.DEFINE_integer("num_jobs", 1, "Number of jobs the nets are split over (net i goes to job i % num_jobs).")
    flags.DEFINE_bool("print_commands", False, "Print one command per net (for Slurm or a TPU pod) and exit.")
    flags.DEFINE_bool("collect", False, "Only collect the finished runs into Table 6 and Figures 6 and 7.")
    flags.DEFINE_string(
        "publish", None, "Copy each finished run (no checkpoints) with its Figure 7 statistics here, and tabulate."
    )
    flags.DEFINE_string("data_dir", None, "tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
    flags.DEFINE_string("prepare_from", None, "Local CIFAR-10 files to prepare the dataset from if it is missing.")
    flags.DEFINE_integer("batch_size", None, "Override the paper's batch of 128 (e.g. to fit a device).")
    flags.DEFINE_integer("steps_per_dispatch", None, "Override the config's steps per call into the devices.")
    flags.DEFINE_enum(
        "dtype",
        "float32",
        ["float32", "bfloat16"],
        "The nets' compute dtype (float32: the paper's; bfloat16: activations, parameters stay float32). Recorded "
        "in each run's config; a table or figure takes runs of one precision.",
    )


def study_nets(nets: list[str] | None, quick: bool, with_1202: bool) -> list[str]:
    chosen = list(nets or (QUICK_NETS if quick else DEFAULT_NETS))
    if with_1202 and "resnet1202" not in chosen:
        chosen.append("resnet1202")
    unknown = set(chosen) - set(cifar10.CIFAR_MODELS)
    if unknown:
        raise ConfigError(f"--nets: unknown nets {sorted(unknown)}; choose from {', '.join(cifar10.CIFAR_MODELS)}.")
    return chosen


def nets_for_job(nets: list[str], job_index: int, num_jobs: int) -> list[str]:
    """Net i goes to job i % num_jobs, so the jobs together run every net once."""
    if not 0 <= job_index < num_jobs:
        raise ConfigError(f"--job_index={job_index} must be in [0, --num_jobs={num_jobs}).")
    return nets[job_index::num_jobs]


def net_config(
    net: str,
    quick: bool = False,
    data_dir: str | None = None,
    prepare_from: str | None = None,
    batch_size: int | None = None,
    runs: int = 1,
    steps_per_dispatch: int | None = None,
    first_seed: int = 0,
    schedule_fraction: str | None = None,
    dtype: str = "float32",
):
    variant = (",quick" if quick else "") + (f",fraction={schedule_fraction}" if schedule_fraction else "")
    config = cifar10.get_config(net + variant)
    if batch_size:
        config.batch_size = batch_size
    if steps_per_dispatch:
        config.steps_per_dispatch = steps_per_dispatch
    config.runs, config.seed = runs, first_seed
    config.model.dtype = dtype
    config.data.data_dir = data_dir
    config.prepare_from = prepare_from
    return config


def net_runs(workdir: Path, net: str) -> list[RunDir]:
    """The finished runs of `net` in `workdir` (its folders named as `run_names` says)."""
    found = [RunDir(p) for p in sorted(workdir.iterdir()) if p.is_dir() and _net_of(p.name) == net]
    return [run for run in found if run.is_finished()]


def _net_of(name: str) -> str | None:
    parsed = parse_run_name(name)
    return parsed and parsed[0]


def net_members(workdir: Path, net: str) -> list[tuple[int, RunDir]]:
    """(seed, directory) of every finished seed of `net` over its runs, in seed order; a seed trained twice is an
    error (the table would count it twice)."""
    members = []
    for run in net_runs(workdir, net):
        of_run = Members.from_config(run.read_config()) if run.config_path.exists() else Members()
        members += zip((int(s) for s in of_run.seeds), run.members(of_run), strict=True)
    seeds = [seed for seed, _ in members]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"{net}: seeds {repeated} were trained in more than one run of {workdir}; keep one of each.")
    return sorted(members, key=lambda member: member[0])


def net_command(net: str, argv: list[str]) -> str:
    """The command that runs just `net` of this study (same flags)."""
    kept = [a for a in argv[1:] if not a.startswith(("--nets", "--job_index", "--num_jobs", "--print_commands"))]
    return shlex.join([sys.executable, "-m", "experiments.cifar_depth_study", *kept, f"--nets={net}"])


def run_nets(
    workdir: Path, nets: list[str], make_config: Callable, train_fn: Callable, finished: Callable | None = None
) -> bool:
    """Trains each unfinished net in `<workdir>/<run_name>` (resuming it if it was interrupted), calling
    `finished(net, run_dir)` for each finished run; False if preempted."""
    for net in nets:
        config = make_config(net)
        run_dir = RunDir(workdir / run_name(net, Members.from_config(config).seeds))
        if run_dir.is_finished():
            logging.info("%s: finished earlier (%s), skipping.", net, run_dir.path)
        else:
            logging.info("%s: training in %s", net, run_dir.path)
            if not train_fn(config, str(run_dir.path)):
                logging.info("%s: preempted and saved; rerun the same command to resume.", net)
                return False
        if finished is not None:
            finished(net, run_dir)
    return True


def check_plan(workdirs: list[Path], nets: list[str], make_config: Callable) -> None:
    """Refuses, before any training, runs that could not join the tables of `workdirs` (the study's workdir and its
    --publish folder): of another schedule fraction or precision than their finished runs, or of a seed that a
    finished run of the same net there already holds under another name (the table would count it twice)."""
    held = {  # each workdir's one fraction and precision, read once
        w: (study_fraction(w, cifar10.CIFAR_MODELS), study_precision(w, cifar10.CIFAR_MODELS))
        for w in workdirs
        if w.is_dir()
    }
    for net in nets:
        config = make_config(net)
        planned = Members.from_config(config)
        name = run_name(net, planned.seeds)
        want = (float(config.schedule_fraction), config.model.dtype)
        for workdir, have in held.items():
            if have[0] is not None and have != want:
                raise UserError(
                    f"{workdir} holds finished runs of the {fraction_label(have[0])} schedule in {have[1]}; "
                    f"{net} would be of the {fraction_label(want[0])} schedule in {want[1]}, and a table takes one "
                    "of each: give the same --schedule_fraction and --dtype, or another --workdir (and --publish)."
                )
            taken = {
                seed: member.path.name if _net_of(member.path.name) == net else member.path.parent.name
                for seed, member in net_members(workdir, net)
                if name not in (member.path.name, member.path.parent.name) and seed in {int(s) for s in planned.seeds}
            }
            if taken:
                listed = ", ".join(f"{seed} in {folder}" for seed, folder in sorted(taken.items()))
                raise UserError(
                    f"{workdir} already holds finished runs of {net} with seeds {sorted(taken)} ({listed}): a table "
                    f"would count them twice. Choose other seeds (--first_seed, --runs) or another --workdir (and "
                    "--publish)."
                )


def publish(net: str, run_dir: RunDir, target: Path, nets: list[str]) -> None:
    """Copies a finished run into `target` (once) without checkpoints, with Figure 7's statistics measured on it,
    and regenerates Table 6 and Figures 6 and 7 there: of `nets` and of every net published there before (a study
    may be run a few nets per command)."""
    import shutil

    from experiments.layer_responses import write_run_responses

    copy = target / run_dir.path.name
    if copy.exists():
        if _tabled(target, net):  # published and tabled by an earlier command
            return
    else:
        if not (run_dir.path / "figure7.csv").exists():
            write_run_responses(run_dir.path, net)  # measured on the trained net: its checkpoint stays behind
        partial = target / f".{run_dir.path.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(run_dir.path, partial, ignore=shutil.ignore_patterns(*LOCAL_ONLY, "*.partial"))
        partial.rename(copy)  # whole or not at all
    collect(target, [n for n in cifar10.CIFAR_MODELS if n in nets or net_runs(target, n)])
    logging.info("%s: published to %s", net, copy)


def _tabled(workdir: Path, net: str) -> bool:
    """Whether `workdir`'s Table 6 has `net`'s row with all its finished seeds (a command stopped between publishing
    a run and redrawing the table and figures leaves it behind, `collect` writing table6.csv last: the next one
    redraws them)."""
    path = workdir / "table6.csv"
    if not path.exists():
        return False
    with open(path, newline="") as f:
        runs = [row["runs"] for row in csv.DictReader(f) if row["net"] == net]
    return runs == [str(len(net_members(workdir, net)))]


def _final(records: list[dict], kind: str, key: str) -> tuple[int, float]:
    last = max((r for r in records if r["kind"] == kind), key=lambda r: r["step"])
    return last["step"], 100 * last[key]


def parameters(net: str) -> int:
    """The net's parameter count (for runs whose result.json predates recording it)."""
    from resnet_jax.models import create_model, spec
    from resnet_jax.models.flops import count_parameters

    return count_parameters(create_model(net, num_classes=10), spec(net).input_shape)


def schedule_fraction(run: RunDir) -> float:
    """The fraction of the paper's schedule a run trained (its config.json; runs from before it was recorded: 1)."""
    return float(run.read_config().get("schedule_fraction", 1.0)) if run.config_path.exists() else 1.0


def precision(run: RunDir) -> str:
    """The dtype a run computed in (its config.json's `model.dtype`)."""
    return run.read_config().model.dtype if run.config_path.exists() else "float32"


def _one_setting(workdir: Path, nets: list[str], what: str, value_of: Callable, label: Callable):
    """The one value (`value_of(run)`) of every finished run of `nets` in `workdir` (None if there is none);
    UserError naming the runs if they mix values: a table or figure takes one."""
    values = {run.path.name: value_of(run) for net in nets for run in net_runs(workdir, net)}
    if len(set(values.values())) > 1:
        listed = ", ".join(f"{name} {label(v)}" for name, v in sorted(values.items()))
        raise UserError(
            f"{workdir} holds runs of different {what}s ({listed}): a table or figure takes one; "
            f"keep each {what} in a workdir of its own."
        )
    return next(iter(values.values()), None)


def study_fraction(workdir: Path, nets: list[str]) -> float | None:
    """The one schedule fraction of the finished runs of `nets` in `workdir` (see `_one_setting`)."""
    return _one_setting(workdir, nets, "schedule fraction", schedule_fraction, fraction_label)


def study_precision(workdir: Path, nets: list[str]) -> str | None:
    """The one precision (dtype) of the finished runs of `nets` in `workdir` (see `_one_setting`)."""
    return _one_setting(workdir, nets, "precision", precision, str)


def fraction_label(fraction: float | None) -> str:
    """'full' or '1/8' (of the paper's schedule)."""
    return "full" if fraction in (None, 1.0) else str(Fraction(fraction).limit_denominator())


def net_row(workdir: Path, net: str) -> dict:
    """One row of Table 6 from a net's finished seeds: final test and training errors over them, and the paper's."""
    members = [member for _, member in net_members(workdir, net)]
    finals = [
        (_final(m.read_metrics(), "eval", "top1_error"), _final(m.read_metrics(), "train", "error")) for m in members
    ]
    test = np.array([t for (_, t), _ in finals])
    train = np.array([t for _, (_, t) in finals])
    paper_row = paper.table("Table 6").get(net, {})
    return {
        "net": net,
        "schedule": fraction_label(study_fraction(workdir, [net])),
        "precision": study_precision(workdir, [net]),
        "runs": len(members),
        "steps": finals[0][0][0],
        "parameters": parameters(net),
        "test_error_mean": round(float(test.mean()), 2),
        "test_error_std": round(float(test.std(ddof=1)), 2) if len(test) > 1 else "",
        "test_error_best": round(float(test.min()), 2),
        "train_error_mean": round(float(train.mean()), 2),
        "paper_test_error": paper_row.get("test error") or "",
    }


def collect(workdir: Path, nets: list[str]) -> list[dict]:
    """Rows of the nets with finished seeds; writes table6.md, table6.csv and figure6.png into `workdir`, and
    figure7.csv/.png from its runs' figure7.csv (where --publish measured them; else there is nothing to draw)."""
    from experiments.layer_responses import study_figure7

    label = study_label(workdir, nets)  # one fraction and one precision, or an error before anything is written
    rows = [net_row(workdir, net) for net in nets if net_runs(workdir, net)]
    if rows:
        draw_figure6(workdir, [r["net"] for r in rows])
    study_figure7(workdir, label)
    _write_tables(workdir, rows)  # table6.csv last: publish takes a net in it for one whose figures are drawn
    return rows


def study_label(workdir: Path, nets: list[str]) -> str:
    """What the figures of `workdir` say of its runs beyond the net: '1/8 schedule', 'bfloat16', both, or '' for
    the paper's schedule in float32 (see `_one_setting`)."""
    fraction, dtype = study_fraction(workdir, nets), study_precision(workdir, nets)
    said = [f"{fraction_label(fraction)} schedule"] if fraction_label(fraction) != "full" else []
    return ", ".join(said + ([dtype] if dtype not in (None, "float32") else []))


FIELDS = [
    "net",
    "schedule",
    "precision",
    "runs",
    "steps",
    "parameters",
    "train_error_mean",
    "test_error_mean",
    "test_error_std",
    "test_error_best",
    "paper_test_error",
]


def _write_tables(workdir: Path, rows: list[dict]) -> None:
    """table6.md, then table6.csv, each whole (a killed job leaves no half table)."""
    lines = [
        "| net | parameters | schedule | precision | runs | iterations | final training error % (mean) | "
        "final test error % (mean +- std) | best | paper (Table 6) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        spread = f" +- {r['test_error_std']:.2f}" if r["test_error_std"] != "" else ""
        lines.append(
            f"| {r['net']} | {r['parameters'] / 1e6:.2f}M | {r['schedule']} | {r['precision']} | {r['runs']} | "
            f"{r['steps']} | "
            f"{r['train_error_mean']:.2f} | "
            f"{r['test_error_mean']:.2f}{spread} | {r['test_error_best']:.2f} | {r['paper_test_error']} |"
        )
    write_atomically(workdir / "table6.md", "\n".join(lines) + "\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(workdir / "table6.csv", table.getvalue())


def _depth(net: str) -> int:
    return int("".join(c for c in net if c.isdigit()))


def error_axis_top(final_errors: list[float]) -> int:
    """The top of Figure 6's error axis: the paper's 20% when the nets converged below 15%; otherwise twice the worst
    final error rounded up to a multiple of 10 (at most 100), so a short schedule's final differences of a point stay
    visible. A net whose final error is not a number (a diverged run) gets the whole range."""
    if not final_errors or not all(math.isfinite(e) for e in final_errors):
        return 100
    worst = max(final_errors)
    return 20 if worst < 15 else min(100, 10 * math.ceil(2 * worst / 10))


def draw_figure6(workdir: Path, nets: list[str]) -> None:
    """Figure 6's panels: plain nets and ResNets (and ResNet-110 against 1202 when it ran), mean curves over runs."""
    from matplotlib.figure import Figure

    from resnet_jax.run.plots import draw_curves, save_figure

    panels = [
        ("plain nets", [n for n in nets if n.startswith("plain")]),
        ("ResNets", [n for n in nets if n.startswith("resnet") and n != "resnet1202"]),
        ("ResNet-110 vs 1202", [n for n in nets if n in ("resnet110", "resnet1202") and "resnet1202" in nets]),
    ]
    panels = [(title, group) for title, group in panels if group]
    label = study_label(workdir, nets)
    schedule = f", {label}" if label else ""
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    for i, (title, group) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        finals = []
        for net in sorted(group, key=_depth):
            members = [member for _, member in net_members(workdir, net)]
            draw_curves(ax, members, f"{net} ({len(members)} runs)" if len(members) > 1 else net)
            finals.append(net_row(workdir, net)["test_error_mean"])
        top = error_axis_top(finals)
        highest = max((np.nanmax(line.get_ydata(), initial=0) for line in ax.get_lines()), default=0)
        cut = f" (axis cut at {top}%)" if highest > top else ""  # said, so that no curve seems to start lower
        ax.set(title=title + schedule + cut, xlabel="iterations", ylabel="error (%)", ylim=(0, top))
        ax.grid(alpha=0.3)
        ax.legend(title="dashed: training, bold: test", fontsize=8)
    fig.tight_layout()
    save_figure(fig, workdir / "figure6.png", dpi=110)


def main(argv: list[str]) -> None:
    del argv
    workdir = Path(FLAGS.workdir)
    nets = study_nets(FLAGS.nets, FLAGS.quick, FLAGS.with_1202)

    def make_config(net):
        return net_config(
            net,
            FLAGS.quick,
            FLAGS.data_dir,
            FLAGS.prepare_from,
            FLAGS.batch_size,
            FLAGS.runs,
            FLAGS.steps_per_dispatch,
            FLAGS.first_seed,
            FLAGS.schedule_fraction,
            FLAGS.dtype,
        )

    for net in nets:  # a flag no config takes (--schedule_fraction=1/3, with --quick) is refused before anything
        make_config(net)
    if FLAGS.print_commands:
        for net in nets:
            print(net_command(net, sys.argv))
        return
    if not FLAGS.collect:
        from resnet_jax.train.loop import train_and_evaluate

        cli.initialize()

        def finished(net, run_dir):
            if FLAGS.publish:
                Path(FLAGS.publish).mkdir(parents=True, exist_ok=True)
                publish(net, run_dir, Path(FLAGS.publish), nets)

        job_nets = nets_for_job(nets, FLAGS.job_index, FLAGS.num_jobs)
        check_plan([workdir] + ([Path(FLAGS.publish)] if FLAGS.publish else []), job_nets, make_config)
        if not run_nets(workdir, job_nets, make_config, train_and_evaluate, finished):
            return
    workdir.mkdir(parents=True, exist_ok=True)
    rows = collect(workdir, nets)
    print((workdir / "table6.md").read_text())
    print(
        json.dumps(
            {"finished": [r["net"] for r in rows], "missing": [n for n in nets if n not in {r["net"] for r in rows}]}
        )
    )


if __name__ == "__main__":
    _define_flags()
    cli.define_distributed_flags()
    cli.run(main)
