"""Shared fixtures: real CIFAR-10 data from ../shared/data, prepared once per test session."""

import io
import tarfile

import pytest

from tests.paths import SHARED_DATA

CIFAR_TARBALL = SHARED_DATA / "cifar10" / "cifar-10-images-jpg.tar.gz"


@pytest.fixture(scope="session")
def cifar_slice_data_dir(tmp_path_factory):
    """A tfds data dir holding a real slice of CIFAR-10: the first 128 training and 50 test images of each class,
    prepared through the same command as the full dataset."""
    if not CIFAR_TARBALL.exists():
        pytest.skip(f"{CIFAR_TARBALL} is absent")
    from resnet_jax.data.preparation import prepare

    root = tmp_path_factory.mktemp("cifar_slice")
    per_split = {"train": 128, "test": 50}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_TARBALL) as src, tarfile.open(root / "slice.tar", "w") as dst:
        for member in src:
            if not member.isfile():
                continue
            _, split, cls, _ = member.name.split("/")
            if counts.get((split, cls), 0) < per_split[split]:
                counts[(split, cls)] = counts.get((split, cls), 0) + 1
                dst.addfile(member, io.BytesIO(src.extractfile(member).read()))
    data_dir = root / "tfds"
    prepare("cifar10", source=str(root / "slice.tar"), data_dir=str(data_dir))
    return data_dir


# --- Input-pipeline fixtures (resnet_jax.data): the real data of ../shared/data, prepared once per session. ---

CIFAR_INDEX = SHARED_DATA / "cifar10" / "cifar10_jpeg_index.csv"
IMAGENET_SAMPLES = SHARED_DATA / "imagenet_samples"


def imagenet_sample_rows() -> list[dict]:
    """labels.tsv of the 1000 real ImageNet images: label (sorted-wnid index), wnid, filename, ..."""
    import csv

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


@pytest.fixture(scope="session")
def cifar10_data_dir(tmp_path_factory):
    """The whole real CIFAR-10 (JPEG copy, 50k/10k) prepared from its tarball with `prepare`."""
    if not CIFAR_TARBALL.exists():
        pytest.skip(f"{CIFAR_TARBALL} is absent")
    from resnet_jax.data.preparation import prepare

    data_dir = tmp_path_factory.mktemp("cifar10_full") / "tfds"
    prepare("cifar10", source=str(CIFAR_TARBALL), data_dir=str(data_dir))
    return data_dir


def prepared_imagenet(root, rows):
    """The sample images of `rows` as a class-folder ImageNet (the same images as train and val) prepared under
    `root`; returns its tfds data dir."""
    if not IMAGENET_SAMPLES.exists():
        pytest.skip(f"{IMAGENET_SAMPLES} is absent")
    from resnet_jax.data.preparation import prepare

    source = imagenet_class_folders(root / "source", rows)
    prepare("imagenet2012", source=str(source), data_dir=str(root / "tfds"))
    return root / "tfds"


@pytest.fixture(scope="session")
def imagenet_samples_data_dir(tmp_path_factory):
    """The 1000 real ImageNet images, prepared."""
    return prepared_imagenet(tmp_path_factory.mktemp("imagenet_samples"), imagenet_sample_rows())


def data_config(name, data_dir, **overrides):
    """The data config of `name` reading from `data_dir` in this process (no grain workers)."""
    from resnet_jax import data

    cfg = data.default_data_config(name)
    cfg.data_dir, cfg.worker_count = str(data_dir), 0
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.fixture(scope="session")
def eight_imagenet_data_dir(tmp_path_factory):
    """Eight real ImageNet images of eight classes, prepared."""
    return prepared_imagenet(tmp_path_factory.mktemp("eight_imagenet"), imagenet_sample_rows()[::125])
