"""Learning-rate schedules of the paper, run on the host and checkpointed with the model.

They react to measured errors (the ImageNet drop "when the error plateaus", ResNet-110's warm-up "until the training
error is below 80%"), so they are small stateful objects rather than optax schedules of the step alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class StepSchedule:
    """`base_lr`, multiplied by `factor` at each boundary (CIFAR: 0.1, /10 at 32k and 48k).

    With `warmup_lr`, the rate is `warmup_lr` until a reported training error falls below `warmup_until_error`
    (Section 4.2's ResNet-110/1202 warm-up: 0.01 until training error < 80%, about 400 iterations).
    With `ramp_steps` > 0, the rate rises linearly to its scheduled value over the first `ramp_steps` steps: Goyal et
    al.'s (2017) gradual warm-up, not the paper's; only the CPU-sized quick schedule uses it (see configs/cifar10.py).
    """

    def __init__(
        self,
        base_lr: float,
        boundaries: Sequence[int],
        factor: float = 0.1,
        warmup_lr: float | None = None,
        warmup_until_error: float = 0.8,
        ramp_steps: int = 0,
    ):
        self.base_lr, self.boundaries, self.factor = base_lr, tuple(boundaries), factor
        self.warmup_lr, self.warmup_until_error = warmup_lr, warmup_until_error
        self.ramp_steps = ramp_steps
        self.warmup_ended_at: int | None = None if warmup_lr is not None else 0

    def __call__(self, step: int) -> float:
        if self.warmup_ended_at is None:
            return self.warmup_lr
        ramp = min(1.0, (step + 1) / self.ramp_steps) if self.ramp_steps else 1.0
        return ramp * self.base_lr * self.factor ** sum(step >= b for b in self.boundaries)

    def observe(self, step: int, *, train_error: float | None = None, val_error: float | None = None) -> None:
        if self.warmup_ended_at is None and train_error is not None and train_error < self.warmup_until_error:
            self.warmup_ended_at = step

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_ended_at": self.warmup_ended_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup_ended_at = state["warmup_ended_at"]


class PlateauSchedule:
    """`base_lr`, multiplied by `factor` when the watched error has not improved by `min_delta` over the last
    `patience` evaluation intervals (Section 3.4: "divided by 10 when the error plateaus"), at most `max_drops` times.

    `signal` 'train_error' watches the mean of the training errors logged during each interval, so that the decision
    uses no data that is reported; 'validation_error' watches the periodic evaluation's error. Decisions are taken
    at evaluations either way.
    """

    def __init__(
        self,
        base_lr: float,
        factor: float = 0.1,
        patience: int = 3,
        min_delta: float = 0.001,
        max_drops: int = 3,
        signal: str = "train_error",
    ):
        self.base_lr, self.factor, self.patience, self.min_delta = base_lr, factor, patience, min_delta
        self.max_drops, self.signal = max_drops, signal
        self.drops, self.best, self.evals_since_best = 0, float("inf"), 0
        self.interval_train_errors: list[float] = []

    def __call__(self, step: int) -> float:
        return self.base_lr * self.factor**self.drops

    def observe(self, step: int, *, train_error: float | None = None, val_error: float | None = None) -> None:
        if train_error is not None:
            self.interval_train_errors.append(train_error)
        if val_error is None:
            return
        if self.signal == "validation_error":
            error = val_error
        else:
            if not self.interval_train_errors:
                return  # an evaluation with no training logged since the last one (a resumed run's first)
            error = sum(self.interval_train_errors) / len(self.interval_train_errors)
        self.interval_train_errors = []
        if error < self.best - self.min_delta:
            self.best, self.evals_since_best = error, 0
            return
        self.evals_since_best += 1
        if self.evals_since_best >= self.patience and self.drops < self.max_drops:
            self.drops, self.evals_since_best = self.drops + 1, 0
            self.best = min(self.best, error)

    def state_dict(self) -> dict[str, Any]:
        return {
            "drops": self.drops,
            "best": self.best,
            "evals_since_best": self.evals_since_best,
            "interval_train_errors": list(self.interval_train_errors),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drops, self.best, self.evals_since_best = state["drops"], state["best"], state["evals_since_best"]
        self.interval_train_errors = list(state.get("interval_train_errors", []))


def make_schedule(schedule_config: Any) -> StepSchedule | PlateauSchedule:
    """The schedule `config.schedule` describes (its `kind`: 'steps' or 'plateau')."""
    s = schedule_config
    if s.kind == "plateau":
        return PlateauSchedule(
            s.base_lr, s.factor, s.plateau_patience, s.plateau_min_delta, s.plateau_max_drops, signal=s.plateau_on
        )
    return StepSchedule(s.base_lr, s.boundaries, s.factor, s.warmup_lr, s.warmup_until_error, s.ramp_steps)
