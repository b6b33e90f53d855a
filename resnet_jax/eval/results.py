"""What an evaluation returns: the errors of one protocol on one split, and their summary over a run's members."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """The errors of one evaluation, with what was evaluated."""

    protocol: str
    split: str
    top1_error: float
    top5_error: float
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self, name: str = "") -> str:
        """The one line every tool prints for a result."""
        prefix = f"{name} " if name else ""
        return (
            f"{prefix}{self.split} ({self.protocol}): top-1 error {100 * self.top1_error:.2f}% (accuracy "
            f"{100 * (1 - self.top1_error):.2f}%), top-5 error {100 * self.top5_error:.2f}%, {self.examples} "
            "examples"
        )


def summarize(results: Sequence[EvalResult]) -> dict[str, Any]:
    """The final result of a run of one or several members: the errors, and over members their mean, standard
    deviation (n - 1) and best, the paper's "best (mean +- std)"."""
    first = results[0]
    top1 = np.array([r.top1_error for r in results])
    top5 = np.array([r.top5_error for r in results])
    summary = {
        "protocol": first.protocol,
        "split": first.split,
        "examples": first.examples,
        "top1_error": float(top1.mean()),
        "top5_error": float(top5.mean()),
    }
    if len(results) > 1:
        summary.update(
            top1_error_std=float(top1.std(ddof=1)),
            top1_error_best=float(top1.min()),
            top5_error_std=float(top5.std(ddof=1)),
            runs=[r.to_dict() for r in results],
        )
    return summary


def describe_summary(summary: dict[str, Any], name: str = "") -> str:
    """One line for `summarize`'s result: the single result, or the members' mean +- std and best."""
    if "runs" not in summary:
        return EvalResult(
            **{k: summary[k] for k in ("protocol", "split", "top1_error", "top5_error", "examples")}
        ).describe(name)
    prefix = f"{name} " if name else ""
    return (
        f"{prefix}{summary['split']} ({summary['protocol']}), {len(summary['runs'])} runs: top-1 error "
        f"{100 * summary['top1_error']:.2f} +- {100 * summary['top1_error_std']:.2f}% (best "
        f"{100 * summary['top1_error_best']:.2f}%), top-5 error {100 * summary['top5_error']:.2f}%, "
        f"{summary['examples']} examples"
    )


def results_from_counts(protocol: str, split: str, totals: dict[str, Any]) -> list[EvalResult]:
    """One `EvalResult` per member from summed counts {examples, top1_errors, top5_errors}, each [members]."""
    totals = {k: np.asarray(v, np.int64).reshape(-1) for k, v in totals.items()}
    if (totals["examples"] == 0).any():  # every member evaluates the same split
        raise ValueError(f"The {split} split yielded no examples to evaluate.")
    return [
        EvalResult(protocol, split, float(t1 / n), float(t5 / n), int(n))
        for n, t1, t5 in zip(totals["examples"], totals["top1_errors"], totals["top5_errors"], strict=True)
    ]
