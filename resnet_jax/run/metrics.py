"""What a person sees of a run: the progress line (absl logging), metrics.jsonl and TensorBoard event files.

Only process 0 writes files. The JSON-lines log is the source of the training-curve plots and of the experiment
tables; TensorBoard is for watching a run live. A multi-run writes one log and one TensorBoard directory per member.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from absl import logging

from resnet_jax.core import multihost
from resnet_jax.run.rundir import RunDir


def format_duration(seconds: float) -> str:
    """'3d 04:05:06' / '04:05:06': an ETA that neither wraps at 24 hours nor hides days."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


class MetricWriter:
    """Writes the metric records of a run's members (one for a single run) and the progress line.

    Args:
      members: each member's directory (`RunDir.members()`; the run's own for a single run).
      total_steps: the run's length, for the ETA.
      start_step: where this process started (0, or the step it resumed at), for the first ETA and for what of
        the logs it keeps.

    A run resumed at step S redoes what came after S (its checkpoint): the records after S, of the cut segment, are
    dropped when this writer first writes (TensorBoard's purge_step does the same to the event files), so the logs
    are those of the weights the run goes on from, and a redone step is written once.
    """

    def __init__(self, members: Sequence[RunDir], total_steps: int, start_step: int = 0):
        self.enabled = multihost.is_main()
        self.members = list(members)
        self.total_steps = total_steps
        self._records: list[dict[tuple[str, int], dict[str, Any]]] = [
            {(r["kind"], r["step"]): r for r in m.read_metrics() if r["step"] <= start_step} if self.enabled else {}
            for m in self.members
        ]
        self._tensorboards = []
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tensorboards = [SummaryWriter(str(m.tensorboard), purge_step=start_step + 1) for m in self.members]
        self._start = (time.perf_counter(), start_step)

    def write(self, step: int, kind: str, values: Sequence[dict[str, Any]]) -> None:
        """Writes one record `{"step", "kind", **values[k]}` per member (in place of one of the same kind and step);
        kind is 'train' or 'eval'."""
        if not self.enabled:
            return
        for member, records, tensorboard, member_values in zip(
            self.members, self._records, self._tensorboards, values, strict=True
        ):
            records[(kind, step)] = {"step": step, "kind": kind, **member_values}
            member.write_metrics(list(records.values()))
            for key, value in member_values.items():
                if isinstance(value, (int, float)):
                    tensorboard.add_scalar(f"{kind}/{key}", value, step)
            tensorboard.flush()

    def progress(self, step: int, loss: float, error: float, learning_rate: float, images_per_sec: float) -> None:
        """The progress line: step, loss, error, learning rate, images/s and the time left at the run's pace."""
        start_time, start_step = self._start
        elapsed = time.perf_counter() - start_time
        eta = (self.total_steps - step) * elapsed / max(step - start_step, 1)
        logging.info(
            "step %d/%d  loss %.4f  error %.2f%%  lr %.4g  %.1f img/s  ETA %s",
            step,
            self.total_steps,
            loss,
            100 * error,
            learning_rate,
            images_per_sec,
            format_duration(eta),
        )

    def close(self) -> None:
        for tensorboard in self._tensorboards:
            tensorboard.close()
