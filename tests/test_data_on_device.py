"""CIFAR on the devices: the training stream computed inside the step has the paper's augmentation, visits every
example once per epoch, is the same on any number of devices, and uses the grain pipeline's mean."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.stats

from resnet_jax.core.sharding import make_mesh
from resnet_jax.data import images, on_device
from resnet_jax.data.transforms import CIFAR_PAD, normalize
from tests.support.data import opened
from tests.support.training import REPO, env

N, B = 1000, 96  # 96 does not divide 1000: batches span epoch boundaries


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": jnp.asarray(rng.integers(0, 256, (N, 32, 32, 3), np.uint8)),
        "labels": jnp.arange(N, dtype=jnp.int32),  # the label is the index: batches show which examples they hold
        "mean": jnp.asarray(rng.uniform(0.3, 0.6, (32, 32, 3)).astype(np.float32)),
        "std": jnp.ones(3, jnp.float32),  # the paper's normalisation: no division,
        "pad": jnp.zeros(3, jnp.float32),  # and padding with the mean colour
    }


def _stream(arrays, seed, batches):
    """The first `batches` global batches of run `seed`, as the training loop computes them (one per dispatch)."""
    out = []
    step = jax.jit(lambda a, o, p: on_device.train_batch(a, o, jnp.int32(seed), p, 0, B))
    for k in range(batches):
        orders = on_device.two_epoch_orders(jnp.int32(seed), (k * B) // N, N)
        out.append(jax.tree.map(np.asarray, step(arrays, orders, np.int32(k * B))))
    return out


def _window(arrays, image, index):
    """(top, left, flipped) of the window of the padded, mean-subtracted example `index` that `image` is."""
    padded = np.pad(
        normalize(np.asarray(arrays["images"][index]), np.asarray(arrays["mean"])),
        ((CIFAR_PAD, CIFAR_PAD), (CIFAR_PAD, CIFAR_PAD), (0, 0)),
    )
    matches = [
        (top, left, flip)
        for top in range(2 * CIFAR_PAD + 1)
        for left in range(2 * CIFAR_PAD + 1)
        for flip in (False, True)
        if np.allclose(
            image,
            padded[top : top + 32, left : left + 32][:, ::-1] if flip else padded[top : top + 32, left : left + 32],
            atol=1e-6,
        )
    ]
    assert len(matches) == 1, f"example {index} is not exactly one window of its padded image: {matches}"
    return matches[0]


def test_each_example_is_a_uniformly_placed_window_of_its_mean_padded_image_flipped_half_the_time():
    arrays = _arrays()
    windows = [
        _window(arrays, image, index)
        for batch in _stream(arrays, 3, 21)
        for image, index in zip(batch["image"], batch["label"], strict=True)
    ]  # 2016 examples, two epochs
    tops, lefts = np.bincount([w[0] for w in windows], minlength=9), np.bincount([w[1] for w in windows], minlength=9)
    assert scipy.stats.chisquare(tops).pvalue > 1e-3 and scipy.stats.chisquare(lefts).pvalue > 1e-3
    assert tops.min() > 0 and lefts.min() > 0 and len(tops) == len(lefts) == 9  # offsets 0..8 on both axes
    flips = sum(w[2] for w in windows)
    assert scipy.stats.binomtest(flips, len(windows), 0.5).pvalue > 1e-3


def test_every_example_once_per_epoch_in_a_new_order_each_epoch():
    arrays = _arrays()
    labels = np.concatenate([b["label"] for b in _stream(arrays, 5, 22)])  # 2112 positions: two epochs and more
    first, second = labels[:N], labels[N : 2 * N]
    assert sorted(first.tolist()) == list(range(N)) and sorted(second.tolist()) == list(range(N))
    assert (first != second).mean() > 0.99
    other_seed = np.concatenate([b["label"] for b in _stream(arrays, 6, 11)])[:N]
    assert (first != other_seed).mean() > 0.99


def test_the_training_split_and_its_mean_are_the_grain_pipelines(cifar_slice_data_dir):
    dataset, cfg = opened("cifar10", cifar_slice_data_dir)
    train = on_device.TrainData.load(dataset, cfg, make_mesh())
    np.testing.assert_array_equal(np.asarray(train.arrays["mean"]), dataset.mean_image)
    source = dataset.source("train")
    assert train.num_examples == len(source) == 1280
    for index in (0, 641, 1279):
        record = source[index]
        assert int(train.arrays["labels"][index]) == record["label"]
        pixels = np.asarray(train.arrays["images"][index])
        np.testing.assert_array_equal(pixels, images.decode_png(record["image"]))


def test_the_global_batch_is_the_same_on_one_and_eight_devices(tmp_path):
    code = f"""
import jax, jax.numpy as jnp, numpy as np
from resnet_jax.data import on_device
from resnet_jax.core.sharding import make_mesh, replicate
from tests.test_data_on_device import _arrays, B
mesh = make_mesh()
arrays = replicate(_arrays(), mesh)
orders = on_device.two_epoch_orders(jnp.int32(7), 1, 1000)
batch = jax.jit(lambda a, o: on_device.shard_batch(on_device.train_batch(a, o, jnp.int32(7), 1040, 3, B), mesh))(
    arrays, orders)
assert len(batch["image"].sharding.device_set) == jax.device_count()
np.save("{tmp_path}/batch_" + str(jax.device_count()) + ".npy", np.asarray(batch["image"]))
"""
    for devices in (1, 8):
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env(devices), capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "batch_1.npy"), np.load(tmp_path / "batch_8.npy"))


def test_black_padding_is_black_in_the_raw_image(cifar_slice_data_dir):
    """mmpretrain's CIFAR recipe pads the raw image with black (`data.pad_with='black'`, per-channel normalisation):
    a white image's augmented views, mapped back to [0, 1] RGB, are white inside and exactly black in the padding;
    with the paper's padding the border is the mean colour instead."""
    from configs import mmpretrain

    dataset, _ = opened("cifar10", cifar_slice_data_dir)
    cfg = mmpretrain.get_config("cifar10_resnet18").data
    assert cfg.pad_with == "black" and cfg.normalization == "per_channel"
    norm = on_device.normalization_arrays(dataset, cfg)
    np.testing.assert_allclose(norm["pad"] * norm["std"] + norm["mean"][0, 0], 0, atol=1e-6)
    white = jnp.full((32, 32, 3), 255, jnp.uint8)
    views = jax.vmap(lambda i: on_device.augment(white, norm, jnp.int32(0), jnp.int32(0), i))(jnp.arange(64))
    raw = np.asarray(views) * norm["std"] + norm["mean"][0, 0]
    black, inside = np.all(np.abs(raw) < 1e-5, -1), np.all(np.abs(raw - 1) < 1e-5, -1)
    assert (black | inside).all() and black.sum() > 64 * 32  # the padding is seen, and is black
    mean_padded = ml_collections.ConfigDict({**cfg.to_dict(), "pad_with": "mean"})
    assert (on_device.normalization_arrays(dataset, mean_padded)["pad"] == 0).all()


def test_the_kth_batch_of_a_dispatch_is_the_batch_k_batches_further_on():
    arrays = _arrays()
    orders = on_device.two_epoch_orders(jnp.int32(4), 0, N)
    batch = jax.jit(lambda a, o, p, k: on_device.train_batch(a, o, jnp.int32(4), p, k, B))
    later = batch(arrays, orders, np.int32(100), np.int32(3))
    np.testing.assert_array_equal(later["label"], batch(arrays, orders, np.int32(100 + 3 * B), np.int32(0))["label"])
    np.testing.assert_array_equal(later["label"], np.asarray(orders[0])[100 + 3 * B : 100 + 4 * B])


def test_the_test_split_on_the_devices_counts_each_image_once_in_whole_batches(cifar_slice_data_dir):
    dataset, cfg = opened("cifar10", cifar_slice_data_dir)
    test = on_device.EvalData.load(dataset, cfg, "test", 96, make_mesh())  # 500 images: 5 batches and 20 of a 6th
    assert test.num_examples == 500
    mask, labels = np.asarray(test.arrays["mask"]), np.asarray(test.arrays["labels"])
    assert mask.shape == labels.shape == (6, 96) and test.arrays["images"].shape == (6, 96, 32, 32, 3)
    assert mask.ravel().tolist() == [True] * 500 + [False] * 76 and (labels.ravel()[500:] == -1).all()
    source = dataset.source("test")
    for index in (0, 250, 499):
        step, row = divmod(index, 96)
        batch = on_device.single_view_batch(test.arrays, step)
        assert int(batch["label"][row]) == source[index]["label"] and bool(batch["mask"][row])
        expected = normalize(images.decode_png(source[index]["image"]), dataset.mean_image)
        np.testing.assert_allclose(np.asarray(batch["image"][row, 0]), expected, atol=1e-6)
