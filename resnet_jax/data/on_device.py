"""CIFAR in device memory: the training stream and the test set computed inside the jitted step.

A CIFAR split is 150 MB of uint8 pixels at most, so it fits on every accelerator. It is read once from the prepared
tfds dataset, decoded on the host, and kept on the devices (replicated); shuffling, mean subtraction, padding,
cropping and flipping then happen inside the jitted training computation, and the host never feeds the step. That is
what lets a 3 ms CIFAR step run at its own speed, and many steps run per dispatch (`resnet_jax.train.step`).

The stream is a pure function of the seed, like the grain pipeline's, with its own randomness (`jax.random`):
  - epoch e visits the N training examples in the order `jax.random.permutation(key(seed, 0, e), N)`;
  - global batch k is positions [kB, (k+1)B) of the epochs laid end to end (a batch may span two epochs);
  - example i of epoch e draws its crop offsets (uniform over 0..8 on both axes) and its flip (p = 1/2) from
    `key(seed, 1, e, i)`.
So a run resumes from its step alone, bit-identically, and every device and host computes the same global batch.
Pixels are RGB / 255 minus the per-pixel training mean, then zero-padded (the mean colour) by 4 pixels, exactly as
`transforms.CifarTrainView` does on the host.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from resnet_jax.core.sharding import batch_sharded, replicate
from resnet_jax.data import images
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.data.transforms import CIFAR_PAD, normalize

_ORDER, _AUGMENT = 0, 1  # the streams of randomness derived from a run's seed
_READ_CHUNK = 2048


def load_split(dataset: PreparedDataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, 3], int32 labels [N]) of a prepared split, decoded on the host."""
    source = dataset.source(split)
    n = len(source)
    pixels = np.empty((n, *dataset.facts.image_shape), np.uint8)
    labels = np.empty((n,), np.int32)
    for start in range(0, n, _READ_CHUNK):
        indices = list(range(start, min(start + _READ_CHUNK, n)))
        for i, record in zip(indices, source.__getitems__(indices), strict=True):
            pixels[i] = images.decode_png(record["image"])
            labels[i] = record["label"]
    return pixels, labels


@dataclasses.dataclass
class TrainData:
    """A training split on the devices: {"images": uint8 [N, H, W, 3], "labels": int32 [N], and the normalisation
    (`PreparedDataset.normalization`): "mean" f32 [H, W, 3], "std" f32 [3] (ones: none), "pad" f32 [3] (0: the mean
    colour)}."""

    arrays: dict[str, jax.Array]

    @classmethod
    def load(
        cls, dataset: PreparedDataset, cfg: ml_collections.ConfigDict, mesh: Mesh, split: str = "train"
    ) -> TrainData:
        pixels, labels = load_split(dataset, split)
        return cls(replicate({"images": pixels, "labels": labels, **normalization_arrays(dataset, cfg)}, mesh))

    @classmethod
    def random(cls, count: int, seed: int, mesh: Mesh, mean: float = 0.5) -> TrainData:
        """`count` random 32x32 uint8 images and labels of 10 classes, normalised by `mean` alone and padded black:
        a training stream for benchmarks and tests of the step, where what the images show does not matter."""
        rng = np.random.default_rng(seed)
        arrays = {
            "images": rng.integers(0, 256, (count, 32, 32, 3), np.uint8),
            "labels": rng.integers(0, 10, count).astype(np.int32),
            "mean": np.full((32, 32, 3), mean, np.float32),
            "std": np.ones(3, np.float32),
            "pad": np.zeros(3, np.float32),
        }
        return cls(replicate(arrays, mesh))

    @property
    def num_examples(self) -> int:
        return self.arrays["labels"].shape[0]


def normalization_arrays(dataset: PreparedDataset, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """`PreparedDataset.normalization` as the arrays a jitted step reads: {"mean", "std" (ones for none), "pad"}."""
    mean, std, pad = dataset.normalization(cfg)
    return {"mean": mean, "std": np.ones(3, np.float32) if std is None else std, "pad": pad}


def epoch_order(seed: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    """The permutation of the n training examples that epoch `epoch` of run `seed` visits."""
    return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _ORDER), epoch), n)


def augment(pixels: jax.Array, norm: dict, seed: jax.Array, epoch: jax.Array, index: jax.Array) -> jax.Array:
    """The paper's CIFAR training view of one uint8 image: mean subtracted, padded (`norm["pad"]`: 0, the mean
    colour), randomly cropped and flipped. `norm` holds "mean", "std" and "pad" (`TrainData`)."""
    key = jax.random.key(seed)
    for value in (_AUGMENT, epoch, index):
        key = jax.random.fold_in(key, value)
    crop_key, flip_key = jax.random.split(key)
    size = pixels.shape[0]
    offsets = jax.random.randint(crop_key, (2,), 0, 2 * CIFAR_PAD + 1)
    image = normalize(pixels, norm["mean"], norm["std"]) - norm["pad"]
    padded = jnp.pad(image, ((CIFAR_PAD, CIFAR_PAD), (CIFAR_PAD, CIFAR_PAD), (0, 0))) + norm["pad"]
    image = jax.lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), (size, size, pixels.shape[-1]))
    return jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)


def two_epoch_orders(seed: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    """The orders of epochs `epoch` and `epoch + 1`, [2, N]: all a dispatch of at most N examples can touch."""
    return jnp.stack([epoch_order(seed, epoch, n), epoch_order(seed, epoch + 1, n)])


def train_batch(
    arrays: dict, orders: jax.Array, seed: jax.Array, first_position: jax.Array, step: jax.Array, batch_size: int
) -> dict[str, jax.Array]:
    """Global batch number `step` of a dispatch starting at stream position `first_position`.

    `orders` is `two_epoch_orders(seed, first_position // N, N)`: a dispatch spans at most two epochs because its
    positions number at most N (checked when the feed is made).
    """
    n = arrays["labels"].shape[0]
    positions = first_position + step * batch_size + jnp.arange(batch_size)
    epochs = positions // n
    indices = orders[epochs - first_position // n, positions % n]
    norm = {key: arrays[key] for key in ("mean", "std", "pad")}
    images = jax.vmap(augment, in_axes=(0, None, None, 0, 0))(arrays["images"][indices], norm, seed, epochs, indices)
    return {"image": images, "label": arrays["labels"][indices]}


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Constrains a batch computed in the step to be split over the devices, as a fed batch would be."""
    return jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))


@dataclasses.dataclass
class EvalData:
    """A test split on the devices in whole global batches: uint8 images [S, B, H, W, 3], labels and mask [S, B].

    The split is padded to S global batches of B; padding has mask False and label -1, so every example counts
    exactly once.
    """

    arrays: dict[str, jax.Array]

    @classmethod
    def load(
        cls, dataset: PreparedDataset, cfg: ml_collections.ConfigDict, split: str, global_batch_size: int, mesh: Mesh
    ) -> EvalData:
        pixels, labels = load_split(dataset, split)
        n = len(labels)
        steps = -(-n // global_batch_size)
        padded = steps * global_batch_size - n
        pixels = np.concatenate([pixels, np.zeros((padded, *pixels.shape[1:]), np.uint8)])
        labels = np.concatenate([labels, np.full((padded,), -1, np.int32)])
        mask = np.arange(steps * global_batch_size) < n
        arrays = {
            "images": pixels.reshape(steps, global_batch_size, *pixels.shape[1:]),
            "labels": labels.reshape(steps, global_batch_size),
            "mask": mask.reshape(steps, global_batch_size),
            **normalization_arrays(dataset, cfg),
        }
        return cls(replicate(arrays, mesh))

    @property
    def num_examples(self) -> int:
        return int(np.asarray(self.arrays["mask"]).sum())


def single_view_batch(arrays: dict, step: jax.Array) -> dict[str, jax.Array]:
    """Batch `step` of an `EvalData` in the 'single' protocol's format (`protocols.py`)."""
    pixels = arrays["images"][step]
    return {
        "image": normalize(pixels, arrays["mean"], arrays["std"])[:, None],
        "label": arrays["labels"][step],
        "mask": arrays["mask"][step],
    }
