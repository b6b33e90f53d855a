"""From each process's local numpy batch to one global jax.Array per leaf, prefetched."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def put_on_mesh(batch: Any, mesh: Mesh, axis: str = "data") -> Any:
    """Global arrays, sharded on their leading (batch) dimension over mesh axis `axis`.

    Each process passes its own local part, whose leading dimension must divide evenly over its
    devices along `axis`; the global batch is the parts in process order.
    """
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


class DevicePrefetchIterator(Iterator):
    """Keeps `size` batches in flight to the devices while the caller computes on the current one.

    Transfers are asynchronous, so host-to-device copies overlap with the training step.
    get_state() is the wrapped iterator's state just after the last batch this iterator returned
    (not after the batches it has fetched ahead), so a checkpoint taken between steps resumes
    exactly at the next step.
    """

    def __init__(self, iterator, mesh: Mesh, size: int = 2, axis: str = "data"):
        self._iterator = iterator
        self._mesh = mesh
        self._size = size
        self._axis = axis
        self._queue = collections.deque()  # (global batch, state after it)
        self._state = iterator.get_state()

    def _fetch(self) -> None:
        batch = next(self._iterator)
        self._queue.append((put_on_mesh(batch, self._mesh, self._axis), self._iterator.get_state()))

    def __next__(self):
        while len(self._queue) <= self._size:
            try:
                self._fetch()
            except StopIteration:
                break
        if not self._queue:
            raise StopIteration
        batch, self._state = self._queue.popleft()
        return batch

    def get_state(self):
        return self._state

    def set_state(self, state) -> None:
        self._queue.clear()
        self._iterator.set_state(state)
        self._state = state
