"""What the code knows about each dataset, in one place: classes, image shape, splits and test protocols.

The config validator, the model specs, the input pipelines, the evaluator and the preparation tools ask this module;
no other module tests a dataset's name. It imports nothing heavy, so the models and configs can use it without tfds
or grain.
"""

from __future__ import annotations

import dataclasses

from resnet_jax.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset as the code sees it.

    Attributes:
      name: the tfds name.
      num_classes: classifier width.
      image_shape: (H, W, C) of one training example as the network sees it.
      splits: the tfds splits, the first being the training split.
      test_split: the split results are reported on.
      protocols: the test protocols that apply (see `resnet_jax.data.protocols`); the first is the default.
      train_examples: examples in the full training split of the original release.
      holdout: examples held out of the training split as split 'val' with `data.holdout_val` (0: not offered).
      imagenet_like: variable-sized JPEGs with the ImageNet augmentation (scale, crop, PCA lighting); otherwise small
        fixed-size images with the CIFAR augmentation (pad, crop, flip).
      score_map_stride: the total stride of the nets that compute score maps on it (the ImageNet nets: 32, one score
        position per 32x32 pixels): the multi-scale protocol's canvases are multiples of it (0: no such protocol).
      archive: the file of the dataset's original release that `prepare --source` reads (CIFAR's python tarball).
      sources: what `python -m resnet_jax.data.prepare NAME --source=...` accepts, for messages.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    splits: tuple[str, ...]
    test_split: str
    protocols: tuple[str, ...]
    train_examples: int
    holdout: int = 0
    imagenet_like: bool = False
    score_map_stride: int = 0
    archive: str = ""
    sources: str = ""

    def split_names(self, holdout_val: bool) -> tuple[str, ...]:
        """The split names a run may use: the tfds splits, plus 'val' with the holdout split."""
        return (*self.splits, "val") if holdout_val and self.holdout else self.splits

    @property
    def holdout_specs(self) -> tuple[str, str]:
        """The tfds split specs of the training split that holdout_val keeps, and of split 'val'."""
        return f"train[:-{self.holdout}]", f"train[-{self.holdout}:]"

    @property
    def fits_on_device(self) -> bool:
        """Whether a split fits in device memory (`data.on_device`): the small fixed-size datasets."""
        return not self.imagenet_like

    def check_protocol(self, protocol: str) -> None:
        if protocol not in self.protocols:
            raise ConfigError(f"Test protocol {protocol!r} does not apply to {self.name}; use one of {self.protocols}.")


def _cifar(name: str, classes: int) -> Dataset:
    tarball = f"cifar-{classes}-python.tar.gz"
    return Dataset(
        name,
        classes,
        (32, 32, 3),
        ("train", "test"),
        "test",
        ("single",),
        train_examples=50_000,
        holdout=5000,
        archive=tarball,
        sources=f"[--source={tarball} or class folders]  # no source: tfds download",
    )


DATASETS: dict[str, Dataset] = {
    "cifar10": _cifar("cifar10", 10),
    "cifar100": _cifar("cifar100", 100),
    "imagenet2012": Dataset(
        "imagenet2012",
        1000,
        (224, 224, 3),
        ("train", "validation"),
        "validation",
        ("1crop", "10crop", "multiscale"),
        train_examples=1_281_167,
        imagenet_like=True,
        score_map_stride=32,
        sources="--source=DIR  # train/<wnid>/*.JPEG + val/<wnid>/*.JPEG, or tfds' manual dir",
    ),
}


def all_protocols() -> tuple[str, ...]:
    """Every test protocol of any dataset, in a stable order."""
    return tuple(dict.fromkeys(p for dataset in DATASETS.values() for p in dataset.protocols))


def get(name: str) -> Dataset:
    """The dataset called `name`; ConfigError listing the known ones otherwise."""
    if name not in DATASETS:
        raise ConfigError(f"Unknown dataset {name!r}; expected one of {tuple(DATASETS)}.")
    return DATASETS[name]
