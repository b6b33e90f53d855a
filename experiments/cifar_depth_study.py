"""The CIFAR-10 depth study of Section 4.2: Table 6 and Figure 6.

    python experiments/cifar_depth_study.py --workdir=workdirs/depth_study                  # all nets, in turn
    python experiments/cifar_depth_study.py --workdir=... --job_index=3 --num_jobs=10          # one slice (array job)
    python experiments/cifar_depth_study.py --workdir=... --print_commands                    # one line per net
    python experiments/cifar_depth_study.py --workdir=... --collect                           # table + figure only
    python experiments/cifar_depth_study.py --workdir=... --quick                             # about an hour on CPU

Each net trains in `<workdir>/<net>` with configs/cifar10.py on the paper's schedule (64k iterations). A finished
net (one with result.json) is not run again and an interrupted one resumes from its checkpoint, so the same command
can be rerun until everything is done. The table reports each net's final test error (the last evaluation, never
the best one) beside Table 6, and Figure 6 is drawn from the runs' logs.
"""

from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path
from typing import Callable

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `configs`

from configs import cifar10  # noqa: E402

PAPER_TABLE6 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43,
                "resnet1202": 7.93}
DEFAULT_NETS = ("plain20", "plain32", "plain44", "plain56", "plain110",
                "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
QUICK_NETS = ("plain20", "plain56", "resnet20", "resnet56")

flags.DEFINE_string("workdir", None, "Directory holding one run directory per net.", required=True)
flags.DEFINE_list("nets", None, f"Nets to run (default: {', '.join(DEFAULT_NETS)}; with --quick: "
                  f"{', '.join(QUICK_NETS)}).")
flags.DEFINE_bool("with_1202", False, "Also run ResNet-1202 (19.4M parameters, slow).")
flags.DEFINE_bool("quick", False, "configs/cifar10.py's quick schedule (400 iterations, about an hour on a 2-core CPU "
                  "for the four default nets) instead of 64k.")
flags.DEFINE_integer("job_index", 0, "This job's index in an array job.")
flags.DEFINE_integer("num_jobs", 1, "Number of jobs the nets are split over (net i goes to job i % num_jobs).")
flags.DEFINE_bool("print_commands", False, "Print one command per net (for Slurm or a TPU pod) and exit.")
flags.DEFINE_bool("collect", False, "Only collect the finished runs into the table and figure.")
flags.DEFINE_string("data_dir", None, "tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
flags.DEFINE_string("prepare_from", None, "Local CIFAR-10 files to prepare the dataset from if it is missing.")
flags.DEFINE_integer("batch_size", None, "Override the paper's batch of 128 (e.g. to fit a device).")
flags.DEFINE_integer("worker_count", None, "grain worker processes per run (default: the config's 2; a GPU needs "
                     "about 8 to keep up, benchmarks/RESULTS.md).")
FLAGS = flags.FLAGS


def study_nets(nets: list[str] | None, quick: bool, with_1202: bool) -> list[str]:
    chosen = list(nets or (QUICK_NETS if quick else DEFAULT_NETS))
    if with_1202 and "resnet1202" not in chosen:
        chosen.append("resnet1202")
    unknown = set(chosen) - set(cifar10.CIFAR_MODELS)
    if unknown:
        raise ValueError(f"Unknown nets {sorted(unknown)}; choose from {cifar10.CIFAR_MODELS}.")
    return chosen


def nets_for_job(nets: list[str], job_index: int, num_jobs: int) -> list[str]:
    """Net i goes to job i % num_jobs, so the jobs together run every net once."""
    if not 0 <= job_index < num_jobs:
        raise ValueError(f"--job_index={job_index} must be in [0, --num_jobs={num_jobs}).")
    return nets[job_index::num_jobs]


def net_config(net: str, quick: bool, data_dir: str | None, prepare_from: str | None, batch_size: int | None,
               worker_count: int | None = None):
    config = cifar10.get_config(f"{net},quick" if quick else net)
    if batch_size:
        config.batch_size = batch_size
    if worker_count is not None:
        config.data.worker_count = worker_count
    config.data.data_dir = data_dir
    config.prepare_from = prepare_from
    return config


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "result.json").exists()


def net_command(net: str, argv: list[str]) -> str:
    """The command that runs just `net` of this study (same flags)."""
    kept = [a for a in argv[1:] if not a.startswith(("--nets", "--job_index", "--num_jobs", "--print_commands"))]
    return shlex.join([sys.executable, argv[0], *kept, f"--nets={net}"])


def run_nets(workdir: Path, nets: list[str], make_config: Callable, train_fn: Callable) -> bool:
    """Trains each unfinished net in `<workdir>/<net>` (resuming it if it was interrupted); False if preempted."""
    for net in nets:
        run_dir = workdir / net
        if is_finished(run_dir):
            print(f"{net}: finished earlier ({run_dir / 'result.json'}), skipping.", flush=True)
            continue
        print(f"{net}: training in {run_dir}", flush=True)
        if not train_fn(make_config(net), str(run_dir)):
            print(f"{net}: preempted and saved; rerun the same command to resume.", flush=True)
            return False
    return True


def collect(workdir: Path, nets: list[str]) -> list[dict]:
    """Final errors of the finished runs, as rows; writes table6.md, table6.csv and figure6.png into `workdir`."""
    from resnet_jax.metric_writer import read_metrics

    rows = []
    for net in nets:
        run_dir = workdir / net
        if not is_finished(run_dir):
            continue
        records = read_metrics(run_dir)
        last_eval = max((r for r in records if r["kind"] == "eval"), key=lambda r: r["step"])
        last_train = max((r for r in records if r["kind"] == "train"), key=lambda r: r["step"])
        rows.append({"net": net, "steps": last_eval["step"], "test_error": round(100 * last_eval["top1_error"], 2),
                     "train_error": round(100 * last_train["error"], 2),
                     "paper_test_error": PAPER_TABLE6.get(net, "")})
    _write_tables(workdir, rows)
    if rows:
        draw_figure6(workdir, [r["net"] for r in rows])
    return rows


def _write_tables(workdir: Path, rows: list[dict]) -> None:
    fields = ["net", "steps", "train_error", "test_error", "paper_test_error"]
    with open(workdir / "table6.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| net | iterations | final training error % | final test error % | paper (Table 6) test error % |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['net']} | {r['steps']} | {r['train_error']:.2f} | {r['test_error']:.2f} | "
              f"{r['paper_test_error']} |" for r in rows]
    (workdir / "table6.md").write_text("\n".join(lines) + "\n")


def draw_figure6(workdir: Path, nets: list[str]) -> None:
    """Three panels as in Figure 6: plain nets, ResNets, and ResNet-110 against ResNet-1202."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resnet_jax.plots import draw_curves

    panels = [("plain nets", [n for n in nets if n.startswith("plain")]),
              ("ResNets", [n for n in nets if n.startswith("resnet") and n != "resnet1202"]),
              ("ResNet-110 vs 1202", [n for n in nets if n in ("resnet110", "resnet1202")])]
    panels = [(title, group) for title, group in panels if group]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (title, group) in zip(axes[0], panels):
        for net in sorted(group, key=lambda n: int("".join(c for c in n if c.isdigit()))):
            draw_curves(ax, workdir / net, net)
        ax.set(title=title, xlabel="iterations", ylabel="error (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(title="dashed: training, bold: test", fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "figure6.png", dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    workdir = Path(FLAGS.workdir)
    nets = study_nets(FLAGS.nets, FLAGS.quick, FLAGS.with_1202)
    if FLAGS.print_commands:
        for net in nets:
            print(net_command(net, sys.argv))
        return
    if not FLAGS.collect:
        from resnet_jax.train import train_and_evaluate

        def make_config(net):
            return net_config(net, FLAGS.quick, FLAGS.data_dir, FLAGS.prepare_from, FLAGS.batch_size,
                              FLAGS.worker_count)

        if not run_nets(workdir, nets_for_job(nets, FLAGS.job_index, FLAGS.num_jobs), make_config,
                        train_and_evaluate):
            return
    workdir.mkdir(parents=True, exist_ok=True)
    rows = collect(workdir, nets)
    print((workdir / "table6.md").read_text())
    print(json.dumps({"finished": [r["net"] for r in rows], "missing": [n for n in nets if n not in
                                                                        {r["net"] for r in rows}]}))


if __name__ == "__main__":
    app.run(main)
