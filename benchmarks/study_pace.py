"""The training pace of finished study runs, from their logs: what benchmarks/RESULTS.md reports for each.

    python -m benchmarks.study_pace results/cifar10_depth_study_cpu_1of8/*_seed*
    python -m benchmarks.study_pace --from_step=5000 results/cifar10_depth_study_cpu_1of8/plain20_seed0

For each run (each member of a multi-run): its iterations, the median and 90th percentile (numpy's linear rule) of
the training images/s of its logged windows (each `log_every_steps` steps; a window that holds an evaluation or a
pause is slower, which is why the median is the pace), the minutes its iterations take at that pace, the minutes its
windows took in all (evaluations included, and any pause inside a window: a SIGSTOP'd study shows here), and the
machines its machines.jsonl names. Measures nothing itself: it reads metrics.jsonl, config.json and machines.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags

from resnet_jax.run.rundir import MACHINES, RunDir

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_integer("from_step", 0, "Only the windows that end after this step.")
    flags.DEFINE_integer("to_step", None, "Only the windows that end at or before this step.")


def pace(member: RunDir, batch_size: int, from_step: int = 0, to_step: int | None = None) -> dict:
    """The pace of one run's (member's) training windows ending in (from_step, to_step]."""
    windows = [
        r
        for r in member.read_metrics()
        if r["kind"] == "train" and r["step"] > from_step and (to_step is None or r["step"] <= to_step)
    ]
    if not windows:
        raise ValueError(f"{member.path}: no training windows between steps {from_step} and {to_step}.")
    rates = np.array([r["images_per_sec"] for r in windows])
    steps = np.diff([from_step] + [r["step"] for r in windows])
    median = float(np.median(rates))
    return {
        "steps": f"{from_step + 1}-{windows[-1]['step']}",
        "median_img_s": round(median),
        "p90_img_s": round(float(np.percentile(rates, 90))),
        "minutes_at_median": round(int(steps.sum()) * batch_size / median / 60, 1),
        "minutes_of_windows": round(float((steps * batch_size / rates).sum()) / 60, 1),
    }


def run_pace(path: Path, from_step: int = 0, to_step: int | None = None) -> list[dict]:
    """One row per member of the run in `path`."""
    run = RunDir(path)
    config = run.read_config()
    machines_path = path / MACHINES
    machines = (
        sorted({json.loads(line)["machine"] for line in machines_path.read_text().splitlines() if line.strip()})
        if machines_path.exists()
        else ["not recorded"]
    )
    rows = []
    for member in run.members():
        name = path.name if member.path == run.path else f"{path.name}/{member.path.name}"
        rows.append({"run": name, **pace(member, config.batch_size, from_step, to_step), "machines": machines})
    return rows


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv[1:]]
    if not paths:
        raise app.UsageError("Give the run folders to read.")
    header = "| run | steps | img/s median (p90) | minutes at the median | minutes of the windows | machines |"
    print(header + "\n|---|---|---:|---:|---:|---|")
    for path in paths:
        for row in run_pace(path, FLAGS.from_step, FLAGS.to_step):
            print(
                f"| {row['run']} | {row['steps']} | {row['median_img_s']} ({row['p90_img_s']}) | "
                f"{row['minutes_at_median']} | {row['minutes_of_windows']} | {'; '.join(row['machines'])} |"
            )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
