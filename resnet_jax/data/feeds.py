"""Feeds: where the training loop's batches come from, k steps per dispatch.

A feed has a host side, called once per dispatch by the loop (`inputs(step)`, the iterator state, `close`), and a
device side, traced into the jitted dispatch (`batch`; see `resnet_jax.train_step.make_dispatch`).

- `DeviceFeed`: CIFAR kept in device memory; each batch is computed inside the step from the stream position
  (`on_device.py`). The host passes the dispatch's first position and the orders of the two epochs it can touch
  (recomputed on the devices only when the epoch changes).
- `HostFeed`: the grain pipeline; the host stacks k batches, puts them on the mesh ahead of time (prefetch) and the
  step takes them in turn. Used for ImageNet, and for CIFAR with `data.on_device=False`.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.data import on_device, transforms
from resnet_jax.sharding import DATA_AXIS, replicate, replicated


class Feed:
    """The interface the training loop and `make_dispatch` use."""

    data: Any = None  # what stays on the devices across dispatches, passed to every dispatch
    inputs_run_axes: Any = None  # for a multi-run: the `vmap` axes of `inputs` (None: shared by the runs)

    def inputs(self, step: int) -> Any:
        """What the host passes to the dispatch that starts at global step `step`."""
        raise NotImplementedError

    def batch(self, data: Any, inputs: Any, seed: jax.Array, i: jax.Array) -> dict:
        """Device side: the global batch of the dispatch's i-th step for the run of `seed`."""
        raise NotImplementedError

    def get_state(self) -> Any:
        """The input position after the last dispatch's batches, for checkpoints."""
        return None

    def set_state(self, state: Any) -> None:
        pass

    def close(self) -> None:
        pass


class DeviceFeed(Feed):
    """Batches computed on the devices from a training split held there (`on_device.TrainData`), for the runs of
    `seeds` (an int, or one per member of a multi-run)."""

    inputs_run_axes = {"position": None, "orders": 0}

    def __init__(self, train_data: on_device.TrainData, global_batch_size: int, mesh: Mesh, seeds: int | list[int]):
        self.data = train_data.arrays
        self._batch_size = global_batch_size
        self._mesh = mesh
        self._n = train_data.num_examples
        orders = functools.partial(on_device.two_epoch_orders, n=self._n)
        multi = isinstance(seeds, list)
        self._orders_of = jax.jit(
            jax.vmap(orders, in_axes=(0, None)) if multi else orders, out_shardings=replicated(mesh)
        )
        self._seeds = np.asarray(seeds, np.int32)
        self._orders: tuple[int, jax.Array] | None = None  # (first epoch, its orders)

    def inputs(self, step: int) -> dict[str, Any]:
        position = step * self._batch_size  # of the dispatch's first example in the stream
        epoch = position // self._n
        if self._orders is None or self._orders[0] != epoch:
            self._orders = (epoch, self._orders_of(self._seeds, np.int32(epoch)))
        return {"position": np.int32(position), "orders": self._orders[1]}

    def batch(self, data, inputs, seed, i):
        batch = on_device.train_batch(data, inputs["orders"], seed, inputs["position"], i, self._batch_size)
        return on_device.shard_batch(batch, self._mesh)

    def get_state(self) -> dict:
        return {"on_device": True}  # the position is the step: nothing else to save


def put_on_mesh(batch: Any, mesh: Mesh, spec: P | None = None) -> Any:
    """Global arrays from each process's local parts, sharded as `spec` (default: the leading, batch, axis).

    Each process passes its own part, whose sharded dimension must divide evenly over its devices; the global array
    is the parts in process order.
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS) if spec is None else spec)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


class _Stacked(Iterator):
    """Groups of k consecutive batches of an iterator, stacked on a new leading axis; state after the group."""

    def __init__(self, iterator, k: int):
        self._iterator, self._k = iterator, k

    def __next__(self):
        batches = [next(self._iterator) for _ in range(self._k)]
        if self._k == 1:
            return jax.tree.map(lambda x: x[None], batches[0])  # a view: no copy
        return jax.tree.map(lambda *xs: np.stack(xs), *batches)

    def get_state(self):
        return self._iterator.get_state()

    def set_state(self, state) -> None:
        self._iterator.set_state(state)


class DevicePrefetchIterator(Iterator):
    """Keeps `size` batches in flight to the devices while the caller computes on the current one.

    Transfers are asynchronous, so host-to-device copies overlap with the training step. get_state() is the wrapped
    iterator's state just after the last batch this iterator returned (not after the batches it has fetched ahead),
    so a checkpoint taken between steps resumes exactly at the next step. An error while fetching ahead is raised
    only once the batches fetched before it have been delivered.
    """

    def __init__(self, iterator, mesh: Mesh, size: int = 2, spec: P | None = None):
        self._iterator = iterator
        self._mesh = mesh
        self._size = size
        self._spec = spec
        self._queue = collections.deque()  # (global batch, state after it)
        self._state = iterator.get_state()
        self._error: Exception | None = None

    def _fetch(self) -> None:
        batch = next(self._iterator)
        self._queue.append((put_on_mesh(batch, self._mesh, self._spec), self._iterator.get_state()))

    def __next__(self):
        while len(self._queue) <= self._size and self._error is None:
            try:
                self._fetch()
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001 - deferred until the batches before it are used
                self._error = error
        if not self._queue:
            if self._error is not None:
                raise self._error
            raise StopIteration
        batch, self._state = self._queue.popleft()
        return batch

    def get_state(self):
        return self._state

    def set_state(self, state) -> None:
        self._queue.clear()
        self._error = None
        self._iterator.set_state(state)
        self._state = state


class HostFeed(Feed):
    """Batches from a host iterator (grain's), k stacked per dispatch and prefetched to the devices.

    With `normalization` (`on_device.normalization_arrays`), batches are ImageNet training crops as uint8 with their
    flips and lighting offsets, finished on the devices (`transforms.finish_imagenet_batch`).

    If the iterator fails for good (`InputPipelineError`) in a multi-host run, the feed keeps the step going with
    all-zero batches and records the error in `failure`, so that no process is left waiting in a collective; the loop
    stops every process together at its next agreement point, before anything computed from those batches is saved.
    """

    def __init__(self, iterator, mesh: Mesh, steps: int, prefetch: int = 2, normalization: dict | None = None):
        self._iterator = iterator
        self.data = None if normalization is None else replicate(normalization, mesh)
        self._batches = DevicePrefetchIterator(_Stacked(iterator, steps), mesh, prefetch, P(None, DATA_AXIS))
        self.failure: Exception | None = None
        self._last = None

    def inputs(self, step: int) -> Any:
        from resnet_jax.errors import InputPipelineError

        if self.failure is None:
            try:
                self._last = next(self._batches)
                return self._last
            except InputPipelineError as error:
                if jax.process_count() == 1 or self._last is None:
                    raise
                self.failure = error
        return jax.tree.map(lambda x: jax.numpy.zeros_like(x), self._last)

    def batch(self, data, inputs, seed, i):
        batch = jax.tree.map(lambda x: x[i], inputs)
        return batch if data is None else transforms.finish_imagenet_batch(batch, data["mean"], data["std"])

    def get_state(self) -> Any:
        return self._batches.get_state()

    def set_state(self, state: Any) -> None:
        self._batches.set_state(state)

    def close(self) -> None:
        self._iterator.close()
