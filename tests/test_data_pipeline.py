"""Training loader: sharding across processes, global reshuffling, exact resumption, corrupt records, devices."""

import logging

import jax
import numpy as np
import pytest

from resnet_jax.core.sharding import make_mesh
from resnet_jax.data import pipeline
from resnet_jax.data.feeds import DevicePrefetchIterator
from resnet_jax.data.options import validate
from resnet_jax.data.pipeline import CorruptRecordError, eval_iterator, train_iterator
from resnet_jax.data.prepare import prepare
from tests.support.data import IMAGENET_SAMPLES, data_config, imagenet_class_folders, imagenet_sample_rows, opened


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_train_batches_have_the_contracted_format(cifar10_data_dir):
    dataset, cfg = opened("cifar10", cifar10_data_dir)
    batch = next(train_iterator(dataset, cfg, global_batch_size=256, seed=0))
    assert batch["image"].shape == (256, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and set(batch["label"].tolist()) <= set(range(10))
    assert batch["index"].dtype == np.int32 and len(set(batch["index"].tolist())) == 256
    assert abs(batch["image"].mean()) < 0.05  # mean-subtracted
    assert np.all(batch["image"] == 0, axis=-1).mean() > 0.01  # zero (= mean) padding shows in some crops


def test_two_processes_read_every_example_exactly_once_per_epoch():
    n, seed, local_batch = 50_000, 3, 100
    streams = [pipeline.train_positions(n, seed, local_batch, process_index=p, process_count=2) for p in range(2)]
    per_epoch = n // (2 * local_batch)  # local batches per process per epoch
    orders = []
    for epoch in range(2):
        seen = []
        for stream in streams:
            batches = [stream[i] for i in range(epoch * per_epoch, (epoch + 1) * per_epoch)]
            assert {int(e) for epochs, _ in batches for e in epochs} == {epoch}
            seen += [int(i) for _, indices in batches for i in indices]
        assert sorted(seen) == list(range(n))
        orders.append(np.concatenate([streams[0][i][1] for i in range(epoch * per_epoch, epoch * per_epoch + 10)]))
    assert (orders[0] != orders[1]).mean() > 0.99  # every epoch is shuffled anew


def test_processes_together_build_the_same_global_batches_as_one(cifar10_data_dir):
    dataset, cfg = opened("cifar10", cifar10_data_dir)
    whole = _take(train_iterator(dataset, cfg, global_batch_size=64, seed=5, process_index=0, process_count=1), 3)
    parts = [
        _take(train_iterator(dataset, cfg, global_batch_size=64, seed=5, process_index=p, process_count=2), 3)
        for p in range(2)
    ]
    for step, batch in enumerate(whole):
        local = [part[step] for part in parts]
        # process 0's part then process 1's is the global batch, in order: the same BN groups on any number of hosts
        for key in ("index", "label", "image"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in local]), batch[key])


@pytest.mark.parametrize("worker_count", [0, 2])
def test_resumed_iteration_equals_uninterrupted_iteration(cifar10_data_dir, worker_count):
    dataset, cfg = opened("cifar10", cifar10_data_dir, worker_count=worker_count)
    iterator = train_iterator(dataset, cfg, global_batch_size=64, seed=11)
    _take(iterator, 4)
    state = iterator.get_state()
    uninterrupted = _take(iterator, 3)
    resumed = train_iterator(dataset, cfg, global_batch_size=64, seed=11)
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 3), uninterrupted)
    if worker_count:
        iterator.close()
        resumed.close()


def test_resumption_across_an_epoch_boundary(imagenet_samples_data_dir):
    dataset, cfg = opened("imagenet2012", imagenet_samples_data_dir, pca_lighting=0.0)
    iterator = train_iterator(dataset, cfg, global_batch_size=100, seed=0)
    _take(iterator, 9)
    state = iterator.get_state()
    uninterrupted = _take(iterator, 2)  # the 10th batch ends epoch 0, the 11th starts epoch 1
    resumed = train_iterator(dataset, cfg, global_batch_size=100, seed=0)
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 2), uninterrupted)


def test_bad_batch_sizes_and_configs_say_what_is_wrong(cifar10_data_dir):
    dataset, cfg = opened("cifar10", cifar10_data_dir)
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        train_iterator(dataset, cfg, global_batch_size=128, seed=0, process_index=0, process_count=3)
    with pytest.raises(AttributeError):
        cfg.shuffle_buffer = 10  # locked: unknown keys are errors
    unlocked = data_config("cifar10", cifar10_data_dir)
    unlocked.unlock()
    unlocked.shuffle_buffer = 10
    with pytest.raises(ValueError, match="shuffle_buffer"):
        validate(unlocked)
    with pytest.raises(ValueError, match="pca_lighting"):
        validate(data_config("cifar10", cifar10_data_dir, pca_lighting=0.1))
    with pytest.raises(ValueError, match="train_crop"):
        validate(data_config("imagenet2012", cifar10_data_dir, train_crop="random"))


@pytest.fixture
def imagenet_with_a_corrupt_image(tmp_path):
    """Seven real images and one truncated JPEG (readable header, damaged data), prepared."""
    if not IMAGENET_SAMPLES.exists():
        pytest.skip(f"{IMAGENET_SAMPLES} is absent")
    rows = imagenet_sample_rows()[::125]
    source = imagenet_class_folders(tmp_path / "source", rows)
    for split in ("train", "val"):
        damaged = source / split / rows[3]["wnid"] / rows[3]["filename"]
        content = damaged.read_bytes()
        damaged.unlink()
        damaged.write_bytes(content[: len(content) // 2])
    prepare("imagenet2012", source=str(source), data_dir=str(tmp_path / "tfds"))
    dataset, cfg = opened("imagenet2012", tmp_path / "tfds")

    def corrupt_index(split):
        source = dataset.source(split)
        return next(i for i in range(len(source)) if source[i]["file_name"].decode() == rows[3]["filename"])

    return dataset, cfg, corrupt_index("train"), corrupt_index("validation")


def test_corrupt_records_fail_with_their_id_by_default(imagenet_with_a_corrupt_image):
    dataset, cfg, corrupt, _ = imagenet_with_a_corrupt_image
    with pytest.raises(CorruptRecordError, match=f"Record {corrupt} of imagenet2012 train"):
        _take(train_iterator(dataset, cfg, global_batch_size=8, seed=0), 2)


def test_corrupt_records_can_be_skipped_and_are_logged(imagenet_with_a_corrupt_image, caplog):
    dataset, cfg, corrupt, corrupt_validation = imagenet_with_a_corrupt_image
    cfg.corrupt_policy = "skip"
    with caplog.at_level(logging.WARNING):
        batches = _take(train_iterator(dataset, cfg, global_batch_size=8, seed=0), 3)  # 3 epochs of 7 good images
    for batch in batches:
        assert batch["image"].shape == (8, 224, 224, 3) and corrupt not in batch["index"]
        assert np.isfinite(batch["image"]).all() and (batch["image"].std((1, 2, 3)) > 0.01).all()
    assert f"Skipping corrupt record {corrupt} of imagenet2012 train" in caplog.text
    (evaluation,) = list(eval_iterator(dataset, cfg, split="validation", protocol="1crop", global_batch_size=8))
    assert evaluation["mask"].sum() == 7 and not evaluation["mask"][evaluation["index"] == corrupt_validation].any()


def test_device_prefetch_yields_global_arrays_and_resumable_state(cifar10_data_dir):
    dataset, cfg = opened("cifar10", cifar10_data_dir)
    mesh = make_mesh()
    host = train_iterator(dataset, cfg, global_batch_size=32, seed=2)
    reference = _take(train_iterator(dataset, cfg, global_batch_size=32, seed=2), 5)
    prefetched = DevicePrefetchIterator(host, mesh, size=2)
    first = _take(prefetched, 2)
    for batch, expected in zip(first, reference, strict=False):
        assert isinstance(batch["image"], jax.Array) and batch["image"].shape == (32, 32, 32, 3)
        assert batch["image"].sharding.spec[0] == "data"
        np.testing.assert_array_equal(np.asarray(batch["image"]), expected["image"])
    state = prefetched.get_state()  # after 2 batches, although 4 have been fetched
    resumed = train_iterator(dataset, cfg, global_batch_size=32, seed=2)
    resumed.set_state(state)
    _assert_same_batches([next(resumed)], [reference[2]])
    prefetched.set_state(state)
    np.testing.assert_array_equal(np.asarray(next(prefetched)["label"]), reference[2]["label"])
