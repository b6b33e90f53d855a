"""Training curves drawn the paper's way (Figs. 4 and 6): training error thin and dashed, test error bold."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from resnet_jax.metric_writer import read_metrics  # noqa: E402


def draw_curves(ax: plt.Axes, workdir: str | Path, label: str, color: str | None = None) -> None:
    """Adds one run's training (dashed) and evaluation (bold) error curves to `ax`."""
    records = read_metrics(workdir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    line = ax.plot([r["step"] for r in train], [100 * r["error"] for r in train], "--", lw=0.8, color=color)[0]
    ax.plot([r["step"] for r in evals], [100 * r["top1_error"] for r in evals], "-", lw=2.2,
            color=line.get_color(), label=label)


def plot_training_curves(workdirs: Sequence[str | Path], labels: Sequence[str], path: str | Path,
                         title: str = "") -> None:
    """One panel with the curves of several runs, saved as a PNG."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for workdir, label in zip(workdirs, labels):
        draw_curves(ax, workdir, label)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="dashed: training, bold: test")
    fig.tight_layout()
    with epath.Path(path).open("wb") as f:  # also gs://
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
