"""Where a dispatch's batches come from, on their own: the device feed, the host feed, and the iterators that heal
or keep the processes in step."""

import errno

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.core import multihost
from resnet_jax.core.errors import InputPipelineError
from resnet_jax.core.sharding import make_mesh, replicate
from resnet_jax.data import on_device, resilient
from resnet_jax.data.feeds import DeviceFeed, HostFeed
from resnet_jax.data.resilient import Lockstep, ResilientIterator


class _Counting:
    """An iterator of dicts {"x": position}, with get_state/set_state/close, failing where `fail_at` says."""

    def __init__(self, fail_at=(), error=None):
        self.position, self.fail_at, self.error, self.closed = 0, set(fail_at), error, False

    def __next__(self):
        if self.position in self.fail_at:
            self.fail_at.discard(self.position)
            raise self.error
        self.position += 1
        return {"x": np.full((4,), self.position - 1, np.int32)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]

    def close(self):
        self.closed = True


def test_resilient_iterator_rebuilds_at_the_last_position_and_gives_up_after_its_retries():
    failures = iter([{2}, {2}, set()])  # each fresh iterator's failures: the first two break at position 2
    built = []

    def make():
        built.append(_Counting(next(failures), OSError(errno.EBADF, "Bad file descriptor")))
        return built[-1]

    iterator = ResilientIterator(make, "test", retries=3, backoff_seconds=0)
    assert [int(next(iterator)["x"][0]) for _ in range(5)] == [0, 1, 2, 3, 4]  # nothing skipped or repeated
    assert len(built) == 3 and built[0].closed and len(iterator.recoveries) == 2
    assert iterator.recoveries[-1]["seconds"] is not None

    stubborn = ResilientIterator(lambda: _Counting({0}, OSError("disk gone")), "test", retries=2, backoff_seconds=0)
    with pytest.raises(InputPipelineError, match="failed 3 times in a row"):
        next(stubborn)
    with pytest.raises(ValueError, match="a bug"):  # not a transient fault: raised at once
        next(ResilientIterator(lambda: _Counting({0}, ValueError("a bug")), "test", backoff_seconds=0))
    assert resilient.is_transient(RuntimeError("Worker process was terminated unexpectedly with exit code -9"))


def test_lockstep_raises_alone_but_keeps_several_processes_in_step(monkeypatch):
    failing = ResilientIterator(lambda: _Counting({1, 2, 3, 4}, OSError("gone")), "t", retries=0, backoff_seconds=0)
    alone = Lockstep(failing, blank=lambda last: {"x": np.zeros_like(last["x"])})
    next(alone)
    with pytest.raises(InputPipelineError):  # one process: nobody to keep in step
        next(alone)

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    failing = ResilientIterator(lambda: _Counting({1, 2, 3, 4}, OSError("gone")), "t", retries=0, backoff_seconds=0)
    step = Lockstep(failing, blank=lambda last: {"x": np.zeros_like(last["x"])})
    assert int(next(step)["x"][0]) == 0
    assert not next(step)["x"].any() and step.failure is not None  # a stand-in, and the failure kept
    monkeypatch.setattr(multihost, "first_failing_process", lambda failed: 1 if failed else None)
    with pytest.raises(InputPipelineError, match="Process 1's training input pipeline failed for good: .*Rerun"):
        step.stop_together("training", " Rerun.")


def test_host_feed_stacks_k_batches_per_dispatch_and_resumes_after_the_last_delivered(monkeypatch):
    mesh = make_mesh()
    feed = HostFeed(_Counting(), mesh, steps=3)
    inputs = feed.inputs(0)
    assert inputs["x"].shape == (3, 4) and np.asarray(inputs["x"])[:, 0].tolist() == [0, 1, 2]
    batch = jax.jit(lambda d, i: feed.batch(d, i, 0, 1))(feed.data, inputs)
    assert np.asarray(batch["x"]).tolist() == [1, 1, 1, 1]  # the dispatch's second step
    assert feed.get_state() == {"position": 3}  # after the delivered batches, not those fetched ahead
    resumed = HostFeed(_Counting(), mesh, steps=3)
    resumed.set_state(feed.get_state())
    assert np.asarray(resumed.inputs(3)["x"])[:, 0].tolist() == [3, 4, 5]


def test_device_feed_computes_each_members_batch_from_its_own_seed():
    n, batch_size = 64, 16
    rng = np.random.default_rng(0)
    arrays = {
        "images": rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
        "labels": np.arange(n, dtype=np.int32),
        "mean": np.zeros((32, 32, 3), np.float32),
        "std": np.ones(3, np.float32),
        "pad": np.zeros(3, np.float32),
    }
    mesh = make_mesh()
    feed = DeviceFeed(on_device.TrainData(replicate(arrays, mesh)), batch_size, mesh, np.array([3, 4], np.int32))
    inputs = feed.inputs(5)  # positions 80..: the dispatch starts in epoch 1
    assert inputs["orders"].shape == (2, 2, n) and int(inputs["position"]) == 80
    labels = []
    for k, seed in enumerate((3, 4)):
        member_inputs = {"position": inputs["position"], "orders": inputs["orders"][k]}
        labels.append(np.asarray(feed.batch(feed.data, member_inputs, jnp.int32(seed), 0)["label"]))
        expected = np.asarray(on_device.epoch_order(jnp.int32(seed), 1, n))[16:32]
        np.testing.assert_array_equal(labels[-1], expected)
    assert not np.array_equal(labels[0], labels[1])  # each member its own data order
    assert feed.get_state() == {"on_device": True}
