"""Faults injected into a real run's input pipeline: for the recovery tests, and for measuring what a recovery costs
(benchmarks/recovery.py). Nothing in a normal run imports this module."""

import jax

from resnet_jax.data import pipeline
from resnet_jax.data.resilient import ResilientIterator


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


def flaky_pipeline(
    at_batch: int, error: Exception, permanent: bool = False, process: int | None = None, monkeypatch=None
) -> dict:
    """Makes the training input pipeline (of process `process`, default: every process) fail with `error` at its
    `at_batch`-th batch, under the real `ResilientIterator`. Returns the request counter."""
    requests = {"count": 0}

    def loader(ds, cfg, what):
        def make():
            iterator = iter(pipeline.in_worker_processes(ds, cfg.worker_count, cfg.prefetch))
            if what.endswith(" train") and process in (None, jax.process_index()):
                return _FlakyIterator(iterator, requests, at_batch, error, permanent)
            return iterator

        return ResilientIterator(make, what, retries=cfg.retries, backoff_seconds=cfg.retry_backoff_seconds)

    if monkeypatch is not None:
        monkeypatch.setattr(pipeline, "_loader", loader)
    else:
        pipeline._loader = loader
    return requests
