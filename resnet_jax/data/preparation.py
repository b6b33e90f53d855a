"""Preparing a dataset: a tfds ArrayRecord dataset plus its per-pixel training mean.

The command line is prepare.py; this is the same as a function, for code (the training quick
start calls it when a dataset is missing).
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_datasets as tfds
from absl import logging

from resnet_jax import datasets
from resnet_jax.data import cifar, imagenet, mean_image, sources
from resnet_jax.data import config as config_lib

_TFDS_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_FROM_FILES = {"cifar10": cifar.Cifar10FromFiles, "cifar100": cifar.Cifar100FromFiles}


def _builder(name: str, source: Path | None, data_dir: str | None) -> tuple[tfds.core.DatasetBuilder, Path | None]:
    """The builder that writes `name` from `source`, and the manual dir it needs (if any)."""
    kwargs = {"data_dir": data_dir, "file_format": "array_record"}
    if name in _FROM_FILES and source is None:
        return tfds.builder(name, **kwargs), None
    if name in _FROM_FILES:
        return _FROM_FILES[name](source=source, **kwargs), None
    if name == "imagenet2012":
        if source is None:
            raise ValueError("imagenet2012 needs --source: class folders or the tfds manual directory.")
        if any((source / f).is_dir() for names in imagenet.SPLIT_FOLDERS.values() for f in names):
            return imagenet.Imagenet2012FromFolders(source=source, **kwargs), None
        if any((source / f).exists() for f in _TFDS_MANUAL_FILES):
            return tfds.builder(name, **kwargs), source
        raise FileNotFoundError(
            f"{source} has neither class folders (train/<wnid>/, val/<wnid>/) nor {' / '.join(_TFDS_MANUAL_FILES)}."
        )
    raise ValueError(f"{name} cannot be prepared from a local --source; omit it to download.")


def prepare(name: str, source: str | os.PathLike | None = None, data_dir: str | None = None) -> Path:
    """Builds dataset `name` (if not built yet) and its per-pixel mean; returns the dataset directory."""
    datasets.get(name)  # an unknown name is an error naming the known ones
    source = Path(source).expanduser() if source is not None else None
    if source is not None and not source.exists():
        raise FileNotFoundError(f"--source {source} does not exist.")
    builder, manual_dir = _builder(name, source, data_dir)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP
            )
        )
    except ModuleNotFoundError as e:
        if e.name != "tensorflow":
            raise
        raise ModuleNotFoundError(
            f"tfds' own {name} builder needs TensorFlow: `pip install tensorflow-cpu` for this "
            "preparation (reading and training do not need it), or prepare from local files with "
            "--source (see python -m resnet_jax.data.prepare --help).",
            name="tensorflow",
        ) from e

    if not (builder.data_path / sources.MEAN_FILE).exists():
        # Read through the registered builder, as training does (ours are not picklable for workers).
        reader = tfds.builder(name, data_dir=data_dir)
        train = reader.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
        logging.info("Computing the per-pixel mean of %d training images.", len(train))
        # Worker processes take seconds to start: worth it for ImageNet-sized decoding only.
        workers = os.cpu_count() if datasets.get(name).imagenet_like and len(train) > 10_000 else 0
        means = mean_image.compute(train, name, worker_count=workers)
        mean_image.store(builder.data_path, means)
    if datasets.get(name).imagenet_like and "validation" in builder.info.splits:
        cfg = config_lib.default_data_config(name)
        cfg.data_dir = data_dir
        sources.image_sizes(cfg, "validation")  # for the multi-scale protocol's canvas buckets
    return Path(os.fspath(builder.data_path))
