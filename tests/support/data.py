"""Datasets for the tests, prepared from the real data of ../shared/data through the same code as a user's."""

import csv

import pytest

from resnet_jax.data.options import default_data_config
from resnet_jax.data.prepare import prepare
from resnet_jax.data.prepared import PreparedDataset
from tests.support.paths import SHARED_DATA

CIFAR_TARBALL = SHARED_DATA / "cifar10" / "cifar-10-images-jpg.tar.gz"
CIFAR_INDEX = SHARED_DATA / "cifar10" / "cifar10_jpeg_index.csv"
IMAGENET_SAMPLES = SHARED_DATA / "imagenet_samples"


def imagenet_sample_rows() -> list[dict]:
    """labels.tsv of the 1000 real ImageNet images: label (sorted-wnid index), wnid, filename, ..."""
    with open(IMAGENET_SAMPLES / "labels.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def imagenet_class_folders(root, rows, splits=("train", "val")):
    """`root`/<split>/<wnid>/<file> symlinks to the sample images of `rows`: a class-folder ImageNet source."""
    for row in rows:
        for split in splits:
            folder = root / split / row["wnid"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / row["filename"]).symlink_to(IMAGENET_SAMPLES / "images" / row["filename"])
    return root


def prepared_imagenet(root, rows):
    """The sample images of `rows` as a class-folder ImageNet (the same images as train and val) prepared under
    `root`; returns its tfds data dir."""
    if not IMAGENET_SAMPLES.exists():
        pytest.skip(f"{IMAGENET_SAMPLES} is absent")
    source = imagenet_class_folders(root / "source", rows)
    prepare("imagenet2012", source=str(source), data_dir=str(root / "tfds"))
    return root / "tfds"


def data_config(name, data_dir, **overrides):
    """The data config of `name` reading from `data_dir` in this process (no grain workers)."""
    cfg = default_data_config(name)
    cfg.data_dir, cfg.worker_count = str(data_dir), 0
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def opened(name, data_dir, **overrides):
    """(the prepared dataset, its data config) of `name` in `data_dir`, as `data_config` makes the config."""
    cfg = data_config(name, data_dir, **overrides)
    return PreparedDataset.open(cfg), cfg
