"""The per-pixel mean image of a training split, computed once by `prepare` and stored beside it.

CIFAR: the mean of the 32x32 training images.

ImageNet: crops come from images resized to many scales, so no image-sized mean lines up with
them. We store the mean of the 1-crop view (shorter side 256, centre 224 crop) of every training
image, which is exactly the geometry of the 1-crop and 10-crop test views and the average
geometry of the training crops (shorter side 368 on average, crop positions spread over the
whole image). It is subtracted from every 224 crop, train or test; the multi-scale test views
subtract it resized to the whole image. A natural-image mean is smooth, so the choice is a
second-order detail -- but it is one, fixed, documented choice.

The file `per_pixel_mean.npz` maps tfds split specs ('train', and for CIFAR also the 45k
holdout training split) to float32 [H, W, 3] means in [0, 1] units.
"""

from __future__ import annotations

import contextlib

import grain
import numpy as np
from absl import logging

from resnet_jax.core.files import write_atomically
from resnet_jax.core.progress import Progress
from resnet_jax.data import datasets, images, pipeline, prepared, protocols

_BATCH = 256  # records decoded per grain element


class _PixelBatch(grain.transforms.Map):
    """Record indices -> {"index", "pixels": uint8 views}; unreadable records are logged and left out."""

    def __init__(self, source, imagenet: bool):
        self._source = source
        self._imagenet = imagenet

    def map(self, indices):
        kept, views = [], []
        for index, record in zip(indices, self._source.__getitems__(indices.tolist()), strict=True):
            try:
                data = record["image"]
                views.append(protocols.one_crop_pixels(data) if self._imagenet else images.decode_png(data))
                kept.append(index)
            except images.CorruptImageError as e:
                logging.warning("Per-pixel mean: skipping unreadable record %d: %s", index, e)
        return {"index": np.array(kept, np.int64), "pixels": np.stack(views)} if views else None


def compute(source, name: str, worker_count: int = 0) -> dict[str, np.ndarray]:
    """Means of the whole training `source` of dataset `name` and, where the dataset has a held-out split (CIFAR's
    45k/5k), of the training examples it keeps."""
    n = len(source)
    dataset = datasets.get(name)
    imagenet = dataset.imagenet_like
    holdout = 0 < dataset.holdout < n
    held_out = dataset.holdout if holdout else 0
    ds = grain.MapDataset.range(n).batch(_BATCH).map(_PixelBatch(source, imagenet)).to_iter_dataset()
    ds = pipeline.in_worker_processes(ds, worker_count)
    total = kept_total = None
    count = kept_count = 0
    progress = Progress("Per-pixel mean", n)
    with contextlib.closing(iter(ds)) as batches:
        for seen, batch in enumerate(batches, 1):
            progress.step(min(seen * _BATCH, n))
            pixels = batch["pixels"].astype(np.float64)
            kept = batch["index"] < n - held_out
            batch_total, batch_kept = pixels.sum(0), pixels[kept].sum(0)
            total = batch_total if total is None else total + batch_total
            kept_total = batch_kept if kept_total is None else kept_total + batch_kept
            count += len(pixels)
            kept_count += int(kept.sum())
    if not count:
        raise ValueError("No readable training image to compute the per-pixel mean from.")
    means = {"train": (total / count / 255).astype(np.float32)}
    if holdout:
        means[dataset.holdout_specs[0]] = (kept_total / kept_count / 255).astype(np.float32)
    return means


def store(directory, means: dict[str, np.ndarray]) -> None:
    """Writes the means atomically: a dataset without its mean file is seen as half-prepared."""
    write_atomically(directory / prepared.MEAN_FILE, prepared.npz_bytes(means))
