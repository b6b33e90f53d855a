"""Progress of a long phase that is not the training loop: one log line with the count, rate and ETA every 10 s,
and a way to stop it cleanly between its steps.

A user must be able to tell a long phase from a hang (BN recomputation over 51,200 ImageNet images, a 10-crop or
multi-scale evaluation of 50,000, the per-pixel mean of 1.28M), and a preemption or Ctrl-C must end one within a
step, not after it: `Progress.step` raises `RunStopped` with the phase's own message when `stop()` says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from absl import logging

from resnet_jax.core.errors import RunStopped


class Progress:
    """`step(done)` after each unit of work: logs '<what>: <done>/<total> <unit>, <rate> <unit>/s, ETA <s> s' at most
    every `every` seconds (not after the last), and first checks `stop()`, raising `RunStopped(stopped)` if it is
    True. `sync()`, if given, is called before a line is logged (e.g. to wait for dispatched device work, so that
    the rate is the devices' and not the dispatcher's)."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "images",
        *,
        stop: Callable[[], bool] = lambda: False,
        stopped: str = "",
        every: float = 10.0,
        sync: Callable[[], object] | None = None,
    ):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self._stop, self._stopped, self._sync = stop, stopped, sync
        self.started = self._last = time.perf_counter()

    def check(self) -> None:
        """Raises `RunStopped` if the phase was asked to stop."""
        if self._stop():
            raise RunStopped(f"{self.what}: stopped. {self._stopped}".strip())

    def step(self, done: int) -> None:
        """`done` of `total` units are done: a progress line if it is time for one; then `check()`."""
        now = time.perf_counter()
        if now - self._last >= self.every and done < self.total:
            if self._sync is not None:
                self._sync()
                now = time.perf_counter()
            rate = done / max(now - self.started, 1e-9)
            left = (self.total - done) / max(rate, 1e-9)
            logging.info("%s: %d/%d %s, %.1f %s/s, ETA %.0f s.", self.what, done, self.total, self.unit, rate,
                         self.unit, left)  # fmt: skip
            self._last = now
        self.check()
