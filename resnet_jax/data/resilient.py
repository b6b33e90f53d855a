"""An input iterator that heals itself: rebuilt at its last position when it fails at the operating-system level.

The input streams are pure functions of their position (`pipeline.py`), so an iterator rebuilt and set to the state
after the last batch it delivered yields exactly the batches the broken one would have: a recovered run is
bit-identical to an uninterrupted one. What counts as a transient fault is an `OSError` (a file, a socket, grain's
shared memory: `Bad file descriptor` was seen once on a GPU host) or a grain worker process that died. A corrupt record
is not retried: it would fail again (see `data.corrupt_policy`). A pipeline that fails for good on one process of a
multi-host run keeps the others in step until they stop together (`Lockstep`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
from absl import logging

from resnet_jax.core import multihost
from resnet_jax.core.errors import InputPipelineError

# How grain 0.2's multiprocess prefetch reports a worker that died (killed, out of memory, crashed).
_WORKER_DIED = "Worker process was terminated unexpectedly"


def is_transient(error: BaseException) -> bool:
    """Whether `error` is an operating-system-level fault of the input pipeline, worth rebuilding it for."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and _WORKER_DIED in str(error))


class ResilientIterator(Iterator):
    """Wraps `make_iterator()`; on a transient fault, rebuilds it at the state after the last delivered batch.

    Args:
      make_iterator: builds a fresh iterator (with get_state / set_state / close) at the start of the stream.
      what: the stream's name, for messages ("imagenet2012 train").
      retries: rebuilds allowed for one batch; past them `InputPipelineError` is raised.
      backoff_seconds: wait before the first rebuild, doubled for each further one.
    """

    def __init__(self, make_iterator: Callable[[], Any], what: str, retries: int = 3, backoff_seconds: float = 1.0):
        self._make = make_iterator
        self._what = what
        self._retries = retries
        self._backoff = backoff_seconds
        self._iterator = make_iterator()
        self._state = self._iterator.get_state()
        self.recoveries: list[dict[str, Any]] = []  # {"cause", "seconds" from the fault to the next batch}

    def __next__(self):
        failed_at = None
        for attempt in range(self._retries + 1):
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise
            except Exception as error:  # transient faults are handled below, the rest re-raised
                if not is_transient(error):
                    raise
                if attempt == self._retries:
                    raise InputPipelineError(
                        f"The {self._what} input pipeline failed {attempt + 1} times in a row: {error!r}. Rerun the "
                        "same command once the cause is fixed (a full /dev/shm or disk, a lost mount): it resumes "
                        "from the latest checkpoint."
                    ) from error
                failed_at = failed_at or time.perf_counter()
                self.recoveries.append({"cause": repr(error), "seconds": None})
                self._rebuild(error, attempt)
                continue
            self._state = self._iterator.get_state()
            if failed_at is not None:
                self.recoveries[-1]["seconds"] = time.perf_counter() - failed_at
                logging.warning(
                    "The %s input pipeline recovered in %.1f s.", self._what, self.recoveries[-1]["seconds"]
                )
            return batch
        raise AssertionError("unreachable")

    def _rebuild(self, error: BaseException, attempt: int) -> None:
        delay = self._backoff * 2**attempt
        logging.warning(
            "The %s input pipeline failed (%r); rebuilding it at its last position in %.1f s (retry %d of %d).",
            self._what,
            error,
            delay,
            attempt + 1,
            self._retries,
        )
        try:
            self._iterator.close()
        except Exception as close_error:  # noqa: BLE001 - a broken iterator may fail to close; it is dropped anyway
            logging.info("Closing the broken %s iterator failed too: %r", self._what, close_error)
        time.sleep(delay)
        self._iterator = self._make()
        self._iterator.set_state(self._state)

    def get_state(self) -> Any:
        return self._state

    def set_state(self, state: Any) -> None:
        self._iterator.set_state(state)
        self._state = state

    def close(self) -> None:
        self._iterator.close()


class Lockstep(Iterator):
    """Keeps every process of a multi-host run in step when one process's input pipeline fails for good.

    A process that stopped alone would leave the others waiting in a collective forever. When the wrapped iterator
    raises `InputPipelineError` in a run of several processes, this one goes on yielding stand-ins (`blank(last
    batch)`: a batch that counts nowhere) and keeps the error in `failure`; at the next agreement point, `stop_together`
    stops every process at once, before anything computed from the stand-ins is saved. With one process, or before any
    batch was delivered, the error is raised at once.
    """

    def __init__(self, iterator: Any, blank: Callable[[Any], Any]):
        self._iterator = iterator
        self._blank = blank
        self._last = None
        self.failure: InputPipelineError | None = None

    def __next__(self):
        if self.failure is None:
            try:
                self._last = next(self._iterator)
                return self._last
            except InputPipelineError as error:
                if jax.process_count() == 1 or self._last is None:
                    raise
                self.failure = error
        return self._blank(self._last)

    def stop_together(self, what: str, then: str = "") -> None:
        """Raises `InputPipelineError` on every process if the pipeline of any failed (a collective: every process
        calls it at the same point); `what` names the pipeline, `then` says what a rerun does."""
        failing = multihost.first_failing_process(self.failure is not None)
        if failing is not None:
            cause = f": {self.failure}" if self.failure else "; see its log"
            raise InputPipelineError(f"Process {failing}'s {what} input pipeline failed for good{cause}.{then}")

    def get_state(self) -> Any:
        return self._iterator.get_state()

    def set_state(self, state: Any) -> None:
        self._iterator.set_state(state)

    def close(self) -> None:
        self._iterator.close()
