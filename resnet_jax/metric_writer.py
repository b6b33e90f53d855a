"""What a person sees of a run: a progress line, a JSON-lines log and TensorBoard event files in the workdir.

Only process 0 writes. The JSON-lines log (`metrics.jsonl`) is the source of the training-curve plots and of the
experiment tables; TensorBoard is for watching a run live.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
from etils import epath

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    def __init__(self, workdir: str | epath.PathLike, total_steps: int):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.path = epath.Path(workdir) / METRICS_FILE
        self._tensorboard = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))
        self._last = (time.perf_counter(), None)

    def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """Appends a record `{"step", "kind", **values}`; kind is 'train' or 'eval'."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self._tensorboard.add_scalar(f"{kind}/{key}", value, step)
        self._tensorboard.flush()

    def log(self, message: str) -> None:
        if self.enabled:
            print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    def progress(self, step: int, loss: float, error: float, learning_rate: float, images_per_sec: float) -> None:
        eta = (self.total_steps - step) * (self._seconds_per_step(step) or 0)
        self.log(f"step {step}/{self.total_steps}  loss {loss:.4f}  error {100 * error:.2f}%  lr {learning_rate:.4g}  "
                 f"{images_per_sec:.1f} img/s  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")

    def _seconds_per_step(self, step: int) -> float | None:
        now, last_step = time.perf_counter(), self._last[1]
        rate = None if last_step is None or step == last_step else (now - self._last[0]) / (step - last_step)
        self._last = (now, step)
        return rate

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(workdir: str | epath.PathLike) -> list[dict[str, Any]]:
    """The records of a run's JSON-lines log (a resumed run may repeat steps; the last record of a step wins)."""
    records: dict[tuple[str, int], dict] = {}
    with (epath.Path(workdir) / METRICS_FILE).open() as f:
        for line in f:
            record = json.loads(line)
            records[(record["kind"], record["step"])] = record
    return sorted(records.values(), key=lambda r: (r["kind"], r["step"]))
