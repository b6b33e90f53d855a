"""Training and evaluation loaders: grain over `tfds.data_source`, sharded by JAX process.

Training (endless): the record indices are shuffled globally, differently every epoch, by the
same seeded permutation on every process; process p of P takes the p-th local slice of each global
batch of that stream, so together the processes read every example exactly once per epoch and their
parts form exactly the global batch one process would read. An example's
augmentation is drawn from a generator seeded by (seed, epoch, index), which makes the stream a
pure function of the seed: the iterator's `get_state()` is a position in it, and an iterator
restored with `set_state()` yields exactly the batches the uninterrupted one would have
(with the same worker_count: grain's workers interleave batches).

Evaluation (one pass): the split is padded to a whole number of global batches; global batch k
holds records k*B ... k*B + B - 1 and process p the p-th b-sized slice of it, so the global
batch assembled by `put_on_mesh` is in record order and every example is in exactly one
batch of one process, whatever B. Batch formats: see protocols.py.

Corrupt records follow `corrupt_policy`: 'fail' raises CorruptRecordError naming the record;
'skip' logs the record (with a running count per process) and leaves it out (training) or
masks it out (evaluation).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import grain
import ml_collections
import numpy as np
from absl import flags, logging
from google.protobuf import message as protobuf_message

from resnet_jax.core.errors import ConfigError
from resnet_jax.core.machine import available_memory
from resnet_jax.data import images, protocols, transforms
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.data.resilient import ResilientIterator

# Errors that mean "this record is damaged", as opposed to bugs.
_CORRUPT_RECORD_ERRORS = (images.CorruptImageError, protobuf_message.DecodeError)


class CorruptRecordError(ValueError):
    """A record could not be read or decoded (corrupt_policy='fail')."""


class _ExampleBatch(grain.transforms.Map):
    """A batch of (epoch, record index) -> a batch of examples made by `view`, under the policy.

    Records are fetched with one batched read (a single-record read of an ArrayRecord file costs
    ~20x more). Index -1 is padding (evaluation); epoch -1 means no randomness (test views).
    Training batches lose the records skipped as corrupt (a rebatch refills them); evaluation
    batches keep them, masked out, as `padding(bucket)` (the view's empty example of the batch's
    canvas bucket).
    """

    def __init__(self, source, view, *, seed: int, policy: str, where: str, padding=None):
        self._source = source
        self._view = view
        self._seed = seed
        self._policy = policy
        self._where = where
        self._padding = padding
        self._skipped = 0

    def _corrupt(self, index: int, error: Exception) -> None:
        if self._policy == "fail":
            raise CorruptRecordError(
                f"Record {index} of {self._where} is corrupt: {error}. Re-prepare the dataset, or set "
                "data.corrupt_policy='skip' to skip (and log) such records."
            ) from error
        self._skipped += 1
        logging.warning(
            "Skipping corrupt record %d of %s (%d skipped by this process): %s",
            index,
            self._where,
            self._skipped,
            error,
        )

    def _records(self, indices: list[int]) -> list[dict | None]:
        try:
            return self._source.__getitems__(indices)
        except _CORRUPT_RECORD_ERRORS:  # find the culprit(s) one record at a time
            records = []
            for index in indices:
                try:
                    records.append(self._source[index])
                except _CORRUPT_RECORD_ERRORS as e:
                    self._corrupt(index, e)
                    records.append(None)
            return records

    def _example(self, record: dict | None, epoch: int, index: int) -> dict | None:
        if record is None:
            return None
        try:
            if epoch < 0:
                example = self._view(record)
            else:
                example = self._view(record, np.random.default_rng((self._seed, epoch, index)))
        except _CORRUPT_RECORD_ERRORS as e:
            self._corrupt(index, e)
            return None
        example.update(label=np.int32(record["label"]), index=np.int32(index))
        return example

    def map(self, batch):
        epochs, indices, *rest = (np.asarray(x).tolist() for x in batch)
        buckets = rest[0] if rest else [0] * len(indices)
        records = iter(self._records([i for i in indices if i >= 0]))
        examples = []
        for epoch, index, bucket in zip(epochs, indices, buckets, strict=True):
            example = self._example(next(records), epoch, index) if index >= 0 else None
            if example is not None:
                if self._padding is not None:
                    example["mask"] = True
                examples.append(example)
            elif self._padding is not None:  # padding, or a skipped record, counted nowhere
                examples.append({**self._padding(bucket), "label": np.int32(-1), "index": np.int32(-1), "mask": False})
        if not examples:
            return None
        return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


class _WithEpoch(grain.transforms.MapWithIndex):
    """Position p in the repeated stream of an n-record split -> (epoch, record index)."""

    def __init__(self, num_records: int):
        self._num_records = num_records

    def map_with_index(self, position, index):
        return position // self._num_records, index


def eval_order(num_records: int, global_batch: int, buckets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(record index, canvas bucket) at each position of an evaluation pass: the records in order, or grouped by
    bucket, each group padded (index -1) to whole global batches so that every global batch holds one bucket."""
    if buckets is None:
        buckets = np.zeros(num_records, np.int64)
    orders, position_buckets = [], []
    for bucket in np.unique(buckets):
        members = np.flatnonzero(buckets == bucket)
        padded = -(-len(members) // global_batch) * global_batch
        orders.append(np.concatenate([members, np.full(padded - len(members), -1)]))
        position_buckets.append(np.full(padded, bucket))
    if not orders:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(orders), np.concatenate(position_buckets)


class _EvalPosition(grain.transforms.Map):
    """Local position -> (no epoch, record index or -1 for padding, canvas bucket) (see module docstring)."""

    def __init__(self, order: np.ndarray, buckets: np.ndarray, global_batch: int, process_index: int, local_batch: int):
        self._order, self._buckets = order, buckets
        self._global_batch = global_batch
        self._offset = process_index * local_batch
        self._local_batch = local_batch

    def map(self, position):
        step, within = divmod(position, self._local_batch)
        k = step * self._global_batch + self._offset + within
        return -1, int(self._order[k]), int(self._buckets[k])


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        shard = grain.sharding.ShardByJaxProcess()
        process_index = shard.shard_index if process_index is None else process_index
        process_count = shard.shard_count if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count}).")
    return process_index, process_count


def _local_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the "
            f"{process_count} processes (each builds an equal local part of the global batch)."
        )
    return global_batch_size // process_count


def _init_worker(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    _die_with_parent()
    # The worker processes are the parallelism; OpenCV's own thread pool would oversubscribe the cores they are given.
    images.use_one_thread()


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker (SIGKILL) when the process that started it dies, however it dies (kill -9,
    the OOM killer): grain (0.2.18) does not arrange it, and its orphaned workers held about 225 MB each for minutes.
    A worker whose parent is already gone exits at once. Elsewhere, nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logging.warning(
            "prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker may outlive its run.", ctypes.get_errno()
        )
    elif os.getppid() == 1:  # the parent died before the call: re-parented to init already
        os._exit(0)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def in_worker_processes(ds: grain.IterDataset, worker_count: int, prefetch: int = 1) -> grain.IterDataset:
    """`ds` computed by `worker_count` grain worker processes (none: in this process, whose OpenCV is then made
    single-threaded as the workers' is: the input pipeline is the parallelism)."""
    if not worker_count:
        images.use_one_thread()
        return ds
    if not flags.FLAGS.is_parsed():
        # grain 0.2.18 reads an absl flag when it starts workers, which fails in programs that do not parse absl
        # flags, such as tests and notebooks (google/grain#1355, fixed after 0.2.18). The flags keep their defaults.
        flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=prefetch)
    return ds.mp_prefetch(options, worker_init_fn=_init_worker)


class _OutOfSharedMemory:
    """Batches copied out of the shared memory grain's workers pass them in, as they arrive.

    A batch from a worker is a set of shared-memory segments, unlinked (by a grain thread) when the last array on them
    is deleted. Arrays that live until the program ends (in a prefetch queue, or aliased by device arrays on the CPU)
    are never unlinked, and Python's resource tracker then warns about leaked segments at shutdown. A copy costs one
    memcpy per batch and leaves nothing in shared memory beyond the batch in hand.
    """

    def __init__(self, iterator):
        self._iterator = iterator

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._iterator)
        return {key: np.array(value) for key, value in batch.items()}

    def __getattr__(self, name):  # get_state, set_state, close
        return getattr(self._iterator, name)


def _loader(
    ds: grain.IterDataset, cfg: ml_collections.ConfigDict, what: str, wrap=None, worker_count: int | None = None
) -> ResilientIterator:
    workers = cfg.worker_count if worker_count is None else worker_count

    def make():
        iterator = iter(in_worker_processes(ds, workers, cfg.prefetch))
        if workers:
            iterator = _OutOfSharedMemory(iterator)
        return iterator if wrap is None else wrap(iterator)

    return ResilientIterator(
        make,
        what,
        retries=cfg.retries,
        backoff_seconds=cfg.retry_backoff_seconds,
    )


def _read_options(cfg: ml_collections.ConfigDict) -> grain.ReadOptions:
    # Elements are whole batches here, so a buffer of one batch per thread is enough.
    return grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=max(cfg.read_threads, 1))


def train_positions(
    num_records: int, seed: int, local_batch: int, process_index: int, process_count: int
) -> grain.MapDataset:
    """This process's endless stream of local batches of (epoch, record index).

    Every process shuffles all records with the same permutation, different each epoch; global batch k is
    positions [k*B, (k+1)*B) of that stream and process p takes the p-th slice of b = B / process_count of it.
    The processes' parts, concatenated in process order, are therefore exactly the global batch a single process
    reads, so BatchNorm groups and results do not depend on the number of hosts.
    """
    # Hashing the seed keeps runs with nearby seeds apart (grain shuffles epoch e with seed + e).
    shuffle_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    ds = grain.MapDataset.range(num_records).shuffle(seed=shuffle_seed).repeat()
    return ds.map_with_index(_WithEpoch(num_records)).batch(local_batch)[process_index::process_count]


def train_view(dataset: PreparedDataset, cfg: ml_collections.ConfigDict):
    """The host's training view of `dataset` under the data config `cfg` (`transforms`)."""
    if dataset.facts.imagenet_like:
        return transforms.ImageNetTrainView(crop=cfg.train_crop, alphastd=cfg.pca_lighting)
    mean, std, pad = dataset.normalization(cfg)
    return transforms.CifarTrainView(mean, std, pad)


def train_iterator(
    dataset: PreparedDataset,
    cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    wrap=None,
) -> ResilientIterator:
    """Endless iterator of this process's part of each global training batch.

    Batches: {"image", "label": int32 [b], "index": int32 [b]} with b = global_batch_size // process_count;
    "index" is the record's position in the training split. CIFAR's "image" is float32 [b, 32, 32, 3], the finished
    view. ImageNet's is the uint8 crop [b, 224, 224, 3], with "flip" bool [b] and "lighting" float32 [b, 3]:
    `transforms.finish_imagenet_batch` (traced into the train step) makes the float view from them. The iterator has
    get_state() / set_state(); process_index / process_count default to JAX's. `wrap`, if given, wraps each fresh
    iterator under the self-healing one (the recovery tests inject their faults there).
    """
    process_index, process_count = _processes(process_index, process_count)
    local_batch = _local_batch(global_batch_size, process_count)
    source = dataset.source("train")
    view = train_view(dataset, cfg)
    ds = train_positions(len(source), seed, local_batch, process_index, process_count)
    ds = ds.map(_ExampleBatch(source, view, seed=seed, policy=cfg.corrupt_policy, where=f"{dataset.name} train"))
    ds = ds.to_iter_dataset(_read_options(cfg))
    if cfg.corrupt_policy == "skip":  # refill batches that lost skipped records
        ds = grain.experimental.RebatchIterDataset(ds, batch_size=local_batch, drop_remainder=True)
    return _loader(ds, cfg, f"{dataset.name} train", wrap)


def eval_buckets(dataset: PreparedDataset, split: str, protocol: str) -> np.ndarray | None:
    """The canvas bucket of every record of `split` for a bucketed protocol (None for the others)."""
    if not protocols.bucketed(protocol):
        return None
    return np.array([protocols.bucket_of(h, w) for h, w in dataset.image_sizes(split)], np.int64)


def eval_steps(dataset: PreparedDataset, split: str, protocol: str, global_batch_size: int) -> int:
    """How many global batches an evaluation pass has (the same on every process)."""
    order, _ = eval_order(dataset.num_examples(split), global_batch_size, eval_buckets(dataset, split, protocol))
    return len(order) // global_batch_size


def eval_iterator(
    dataset: PreparedDataset,
    cfg: ml_collections.ConfigDict,
    *,
    split: str,
    protocol: str,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> ResilientIterator:
    """One pass over `split` with a test protocol; every example is in exactly one batch, once.

    protocol: 'single' (CIFAR), '1crop', '10crop', 'multiscale' (ImageNet). Formats: protocols.py. Global batch k
    holds the records at positions [kB, (k+1)B) of `eval_order` (the split in order, or grouped by canvas bucket),
    and process p the p-th slice of it.
    """
    process_index, process_count = _processes(process_index, process_count)
    local_batch = _local_batch(global_batch_size, process_count)
    dataset.facts.check_protocol(protocol)
    source = dataset.source(split)
    view = eval_view(dataset, cfg, protocol)
    order, buckets = eval_order(len(source), global_batch_size, eval_buckets(dataset, split, protocol))
    ds = grain.MapDataset.range(len(order) // process_count)
    ds = ds.map(_EvalPosition(order, buckets, global_batch_size, process_index, local_batch)).batch(local_batch)
    ds = ds.map(
        _ExampleBatch(
            source, view, seed=0, policy=cfg.corrupt_policy, where=f"{dataset.name} {split}", padding=view.empty
        )
    )
    ds = ds.to_iter_dataset(_read_options(cfg))
    workers = eval_workers(cfg, protocol, local_batch * example_bytes(view, protocol))
    return _loader(ds, cfg, f"{dataset.name} {split}", worker_count=workers)


def largest_example(view: protocols._View, protocol: str) -> dict[str, np.ndarray]:
    """The views of one example of a test view's batches at their largest (the multi-scale widest canvas bucket)."""
    buckets = range(protocols.NUM_BUCKETS) if protocols.bucketed(protocol) else (0,)
    return max((view.empty(bucket) for bucket in buckets), key=lambda e: sum(a.nbytes for a in e.values()))


def example_bytes(view: protocols._View, protocol: str) -> int:
    """Host bytes of one example of a test view's batches: its largest views, label, mask, index."""
    return sum(a.nbytes for a in largest_example(view, protocol).values()) + 4 + 1 + 4


_IN_FLIGHT_SHARE = 3  # an evaluation's batches in flight take at most 1/3 of the host memory available; the rest is
# the devices' program (on a CPU, host memory too), the model, other processes


def in_flight(cfg: ml_collections.ConfigDict, workers: int) -> int:
    """Batches of an input pipeline that may be in host memory at once: the batch in hand and its copy on the devices
    (on a CPU, host memory too), and where batches are read (in each grain worker, or in the main process without
    workers) one being built by each reading thread and as many ready in grain's read buffer, and a worker's
    `data.prefetch` more. Measured: ResNet-18's 10-crop evaluation at batch 256 read in the main process peaked at
    13.1 GiB, about 6 batches of 1.44 GiB and the program (benchmarks/RESULTS.md)."""
    reading = 2 * max(cfg.read_threads, 1)
    return 2 + (workers * (cfg.prefetch + reading) if workers else reading)


def eval_view(dataset: PreparedDataset, cfg: ml_collections.ConfigDict, protocol: str) -> protocols._View:
    """The test view of `protocol` with the dataset's normalisation, as `eval_iterator` applies it."""
    mean, std, _ = dataset.normalization(cfg)
    return protocols.VIEWS[protocol](mean, std, side=cfg.one_crop_side)


def eval_batch_that_fits(
    dataset: PreparedDataset,
    cfg: ml_collections.ConfigDict,
    protocol: str,
    global_batch_size: int,
    multiple: int,
    process_count: int | None = None,
) -> int:
    """`global_batch_size`, or where its batches in flight (`in_flight`, reading in this process) would need more
    than a third of the host memory available now, the largest multiple of `multiple` that fits, in one log line (the
    scores do not depend on the batch: every example counts once). A 10-crop batch of 256 ImageNet images is
    1.4 GiB, a multi-scale one up to 5.8 GiB. ConfigError if not even `multiple` examples fit."""
    _, process_count = _processes(None, process_count)
    per_batch = example_bytes(eval_view(dataset, cfg, protocol), protocol) * in_flight(cfg, 0) / process_count
    available = available_memory()
    limit = available / _IN_FLIGHT_SHARE
    if global_batch_size * per_batch <= limit:
        return global_batch_size
    fitted = min(global_batch_size, int(limit // (per_batch * multiple)) * multiple)
    if fitted < multiple:
        raise ConfigError(
            f"A {protocol} evaluation batch of {multiple} (one example per device) needs "
            f"{multiple * per_batch / 2**30:.1f} GiB in flight, more than a third of the "
            f"{available / 2**30:.1f} GiB of host memory available: free memory, or evaluate on fewer "
            "devices per host."
        )
    logging.info(
        "Evaluation (%s): batches of %d would need %.1f GiB of host memory in flight, more than a third of the "
        "%.1f GiB available: evaluating in batches of %d (%.1f GiB; the scores do not depend on it; --batch_size of "
        "resnet_jax.evaluate or config.eval.batch_size sets it).",
        protocol, global_batch_size, global_batch_size * per_batch / 2**30, available / 2**30, fitted,
        fitted * per_batch / 2**30,
    )  # fmt: skip
    return fitted


def eval_workers(cfg: ml_collections.ConfigDict, protocol: str, batch_bytes: int) -> int:
    """The grain workers an evaluation pass with batches of `batch_bytes` (per process) uses: `data.worker_count`,
    fewer where the batches in flight (`in_flight`) would exceed a third of the host memory available now (8 workers
    hold up to 34 batches: tens of GiB at 10 crops), in one log line."""
    available = available_memory()
    workers = cfg.worker_count
    while workers and in_flight(cfg, workers) * batch_bytes > available / _IN_FLIGHT_SHARE:
        workers -= 1
    if workers < cfg.worker_count:
        logging.info(
            "Evaluation (%s): batches of %.2f GiB, so %d of data.worker_count=%d grain workers: %d batches in flight "
            "(%.1f GiB) of the %.1f GiB available.",
            protocol, batch_bytes / 2**30, workers, cfg.worker_count, in_flight(cfg, workers),
            in_flight(cfg, workers) * batch_bytes / 2**30, available / 2**30,
        )  # fmt: skip
    return workers
