"""Faults injected into a real run's training input pipeline, under its self-healing iterator: for the recovery tests,
and for measuring what a recovery costs (benchmarks/recovery.py). A run takes them through its `input_hook`
(`resnet_jax.train.loop.Trainer`); nothing in a normal run uses this module."""

import jax


class _FlakyIterator:
    """A real iterator that raises `error` at the `at_batch`-th batch request, counted over rebuilds (and at every
    request after it if `permanent`)."""

    def __init__(self, iterator, requests: dict, at_batch: int, error: Exception, permanent: bool):
        self._iterator, self._requests = iterator, requests
        self._at_batch, self._error, self._permanent = at_batch, error, permanent

    def __next__(self):
        self._requests["count"] += 1
        count = self._requests["count"]
        if count == self._at_batch or (self._permanent and count > self._at_batch):
            raise self._error
        return next(self._iterator)

    def __getattr__(self, name):  # get_state, set_state, close
        return getattr(self._iterator, name)


class FlakyInput:
    """An `input_hook` that makes the training input pipeline (of process `process`, default: every process) fail
    with `error` at its `at_batch`-th batch request; `requests["count"]` counts the requests."""

    def __init__(self, at_batch: int, error: Exception, permanent: bool = False, process: int | None = None):
        self.requests = {"count": 0}
        self._at_batch, self._error, self._permanent, self._process = at_batch, error, permanent, process

    def __call__(self, iterator):
        if self._process not in (None, jax.process_index()):
            return iterator
        return _FlakyIterator(iterator, self.requests, self._at_batch, self._error, self._permanent)
