"""Training curves drawn the paper's way (Figs. 4 and 6): training error thin and dashed, test error bold.

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`), which needs no display and chooses no
global backend, so importing or calling this module changes nothing for the caller's own plots.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from resnet_jax.core.files import write_atomically
from resnet_jax.run.rundir import RunDir


def curves(members: Sequence[RunDir]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The training and evaluation error (%) against steps, averaged over `members` (one run or several seeds) at
    the steps all of them logged: ({"step", "error"}, {"step", "error"})."""

    def mean_curve(kind: str, key: str) -> dict[str, np.ndarray]:
        per_member = [{r["step"]: r[key] for r in m.read_metrics() if r["kind"] == kind} for m in members]
        steps = sorted(set.intersection(*(set(c) for c in per_member))) if per_member else []
        return {"step": np.array(steps), "error": np.array([100 * np.mean([c[s] for c in per_member]) for s in steps])}

    return mean_curve("train", "error"), mean_curve("eval", "top1_error")


def draw_curves(ax: Axes, members: Sequence[RunDir], label: str, color: str | None = None) -> None:
    """Adds the training (dashed) and evaluation (bold) error curves of one net to `ax`, the mean over its members."""
    train, evaluation = curves(members)
    line = ax.plot(train["step"], train["error"], "--", lw=0.8, color=color)[0]
    ax.plot(evaluation["step"], evaluation["error"], "-", lw=2.2, color=line.get_color(), label=label)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Writes `fig` as a PNG to a local or gs:// path, whole (`write_atomically`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_atomically(path, buffer.getvalue())


def plot_training_curves(
    members: Sequence[RunDir], labels: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
    """One panel with the curves of each of `members` (labelled `labels`), saved as a PNG."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for member, label in zip(members, labels, strict=True):
        draw_curves(ax, [member], label)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="dashed: training, bold: test")
    fig.tight_layout()
    save_figure(fig, path)
