"""Feeds: where the training loop's batches come from, k steps per dispatch.

A feed has a host side, called once per dispatch by the loop (`inputs(step)`, the iterator state, `close`), and a
device side, traced into the jitted dispatch (`batch`; see `resnet_jax.train.step.make_dispatch`). A feed serves the
members of a run (`resnet_jax.recipe.members`): `seeds` has one entry per member, and `batch` takes one member's.
`make_feed` builds the one a data config asks for.

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

from resnet_jax.core.errors import ConfigError
from resnet_jax.core.sharding import DATA_AXIS, replicate, replicated
from resnet_jax.data import on_device, pipeline, transforms
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.data.resilient import Lockstep


class Feed:
    """The interface the training loop and `make_dispatch` use."""

    data: Any = None  # what stays on the devices across dispatches, passed to every dispatch
    inputs_member_axes: Any = None  # which parts of `inputs` carry the member axis (`Members.over`; None: shared)

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

    def stop_together_if_failed(self, then: str) -> None:
        """At an agreement point of the loop (a collective): stops every process if one's inputs failed for good."""

    @property
    def recoveries(self) -> list[dict]:
        """The input pipeline's recoveries so far (`ResilientIterator.recoveries`): cause and seconds of each."""
        return []

    def close(self) -> None:
        pass


class DeviceFeed(Feed):
    """Batches computed on the devices from a training split held there (`on_device.TrainData`), for the members of
    `seeds` (int32 [members])."""

    inputs_member_axes = {"position": None, "orders": 0}

    def __init__(self, train_data: on_device.TrainData, global_batch_size: int, mesh: Mesh, seeds: np.ndarray):
        self.data = train_data.arrays
        self._batch_size = global_batch_size
        self._mesh = mesh
        self._n = train_data.num_examples
        orders = functools.partial(on_device.two_epoch_orders, n=self._n)
        self._orders_of = jax.jit(jax.vmap(orders, in_axes=(0, None)), out_shardings=replicated(mesh))
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
    all-zero batches (`Lockstep`), so that no process is left waiting in a collective; the loop stops every process
    together at its next agreement point, before anything computed from those batches is saved.
    """

    def __init__(self, iterator, mesh: Mesh, steps: int, prefetch: int = 2, normalization: dict | None = None):
        self._iterator = iterator
        self.data = None if normalization is None else replicate(normalization, mesh)
        prefetched = DevicePrefetchIterator(_Stacked(iterator, steps), mesh, prefetch, P(None, DATA_AXIS))
        self._batches = Lockstep(prefetched, blank=lambda last: jax.tree.map(jax.numpy.zeros_like, last))

    def inputs(self, step: int) -> Any:
        return next(self._batches)

    def stop_together_if_failed(self, then: str) -> None:
        self._batches.stop_together("training", then)

    @property
    def recoveries(self) -> list[dict]:
        return self._iterator.recoveries

    def batch(self, data, inputs, seed, i):
        batch = jax.tree.map(lambda x: x[i], inputs)
        return batch if data is None else transforms.finish_imagenet_batch(batch, data["mean"], data["std"])

    def get_state(self) -> Any:
        return self._batches.get_state()

    def set_state(self, state: Any) -> None:
        self._batches.set_state(state)

    def close(self) -> None:
        self._iterator.close()


def make_feed(
    dataset: PreparedDataset,
    cfg: Any,
    mesh: Mesh,
    *,
    batch_size: int,
    steps: int,
    seeds: np.ndarray,
    wrap: Any = None,
) -> Feed:
    """The training stream of the members of `seeds` (int32 [members]) in dispatches of `steps` batches, as the data
    config `cfg` asks: on the devices (`data.on_device`), or from grain (one member; `wrap` as for
    `pipeline.train_iterator`)."""
    if cfg.on_device:
        train_data = on_device.TrainData.load(dataset, cfg, mesh)
        if steps * batch_size > train_data.num_examples:
            raise ConfigError(
                f"config.steps_per_dispatch * batch_size = {steps} * {batch_size} exceeds the "
                f"{train_data.num_examples} training examples; a dispatch may span at most one epoch "
                "boundary: lower steps_per_dispatch."
            )
        return DeviceFeed(train_data, batch_size, mesh, seeds)
    (seed,) = seeds  # one member: several need the data on the devices (config.validate)
    iterator = pipeline.train_iterator(dataset, cfg, global_batch_size=batch_size, seed=int(seed), wrap=wrap)
    finished_on_device = pipeline.train_view(dataset, cfg).finished_on_device
    normalization = on_device.normalization_arrays(dataset, cfg) if finished_on_device else None
    return HostFeed(iterator, mesh, steps, normalization=normalization)
