"""One explicit entry per published weight file (timm's pattern: nothing is inferred from a name).

Each `Weights` says which of our nets the file fills and with which options, where the file is and how to check it,
what the weights expect as input, what their publisher measured and under which licence they come. `load` and
`python -m resnet_jax.evaluate --weights=MODEL:TAG` ask `get(model, tag)`.

Sources, read 2026-11 (none of these files can be downloaded from the machines this project is built on, so each
entry's tensor names and shapes are checked offline against a synthetic state dict: tests/test_pretrained.py):
- torchvision: `torchvision/models/resnet.py` (the `ResNet*_Weights` enums: URL, `acc@1`/`acc@5`, `num_params`) and
  `transforms/_presets.py` (resize, crop, mean and std); its ResNet-50/101/152 put the stride on the 3x3 ("v1.5").
  Only the SHA-256's first 8 hex digits are published, in the file name (`torch.hub` checks them).
- akamaster/pytorch_resnet_cifar10 @ d5489e8: `pretrained_models/` (file names carry SHA-256[:8]; the full digests of
  ResNet-20..56 were computed on the files, see ../shared/data/README.md), README (test accuracy), `trainer.py`
  (normalisation: ImageNet's mean and std).
- open-mmlab/mmpretrain @ ee7f2e8: `configs/resnet/metafile.yml` (URL, top-1/top-5), `configs/_base_/datasets/`
  (normalisation, in 0..255 units, RGB); `tools/publish_model.py` names a file by SHA-256[:8].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from resnet_jax.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Weights:
    """A published weight file for one of our nets.

    Attributes:
      model: the net it fills (`resnet_jax.models.MODEL_NAMES`).
      tag: its name among that net's weights ('torchvision_v1', 'akamaster', ...): `load(model, tag)`.
      url: where its publisher serves it; the last path component is the file name a mirror and the cache use.
      sha256: its SHA-256, in full where known, otherwise the published prefix (checked as `torch.hub` does).
      layout: the PyTorch state-dict naming (`resnet_jax.interop.convert.TORCH_LAYOUTS`).
      options: the `create_model` options that reproduce the publisher's net (torchvision's v1.5 bottleneck:
        `stride_on_3x3=True`); the other options keep their defaults.
      mean, std: the per-channel input normalisation the weights were trained with, in 0..255 units, RGB.
      dataset: the dataset they were trained on (`resnet_jax.data.datasets`); its classes are the head's width.
      top1, top5: the publisher's accuracy in percent (None where not published).
      evaluation: how the publisher measured it (the nearest of our protocols is `protocol`).
      protocol: our test protocol that matches the publisher's evaluation best.
      one_crop_side: for ImageNet weights, the shorter side the publisher resized to before the centre 224 crop
        (evaluations of the weights use it for '1crop'); None for CIFAR's.
      licence: the licence the weights are published under, as their publisher states it.
      source: where the facts of this entry were read.
    """

    model: str
    tag: str
    url: str
    sha256: str
    layout: str
    options: Mapping[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dataset: str
    top1: float
    top5: float | None
    evaluation: str
    protocol: str
    licence: str
    source: str
    one_crop_side: int | None = None

    @property
    def name(self) -> str:
        """'MODEL:TAG', as the command line names it."""
        return f"{self.model}:{self.tag}"

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def full_hash(self) -> bool:
        """Whether `sha256` is the whole digest (64 hex digits) rather than a published prefix."""
        return len(self.sha256) == 64


# Input normalisations, 0..255 units.
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # torchvision's (0.485, ...) x 255
MMPRETRAIN_CIFAR_MEAN, MMPRETRAIN_CIFAR_STD = (125.307, 122.961, 113.8575), (51.5865, 50.847, 51.255)

_TORCHVISION = "https://download.pytorch.org/models/"
_TORCHVISION_LICENCE = (
    "BSD-3-Clause (torchvision); the weights 'may have their own licenses or terms ... derived from the dataset "
    "used for training' (torchvision README): ImageNet's terms may apply"
)
_TORCHVISION_SOURCE = "torchvision.models.ResNet*_Weights"
_V1_EVAL, _V2_EVAL = "ImageNet val, resize 256, centre crop 224", "ImageNet val, resize 232, centre crop 224"

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_AKAMASTER_SOURCE = "akamaster/pytorch_resnet_cifar10 README and trainer.py"

_MMPRETRAIN = "https://download.openmmlab.com/mmclassification/v0/resnet/"
_MMPRETRAIN_SOURCE = "open-mmlab/mmpretrain configs/resnet/metafile.yml"


def _torchvision(depth: int, version: int, prefix: str, top1: float, top5: float) -> Weights:
    return Weights(
        model=f"resnet{depth}",
        tag=f"torchvision_v{version}",
        url=f"{_TORCHVISION}resnet{depth}-{prefix}.pth",
        sha256=prefix,
        layout="torchvision",
        options={"stride_on_3x3": True} if depth >= 50 else {},  # v1.5; a basic block has one stride to place
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dataset="imagenet2012",
        top1=top1,
        top5=top5,
        evaluation=_V1_EVAL if version == 1 else _V2_EVAL,
        protocol="1crop",
        licence=_TORCHVISION_LICENCE,
        source=_TORCHVISION_SOURCE,
        one_crop_side=256 if version == 1 else 232,
    )


def _akamaster(depth: int, sha256: str, top1: float) -> Weights:
    """What is known of these files and their figures: trainer.py (@ d5489e8) evaluates on the CIFAR-10 test set
    after every epoch, records the best of those accuracies as `best_prec1`, and writes `model.th` once, after the
    last epoch: the files hold the last epoch's weights beside the best epoch's accuracy (ResNet-20/32/44/56:
    91.78/92.78/93.14/93.62, in the files). `top1` is the repository README's figure, which is neither: lower than
    each file's best_prec1 (91.73/92.63/93.10/93.39) and not said to be measured on these files. The last epoch's own
    accuracy is not published; on the 1,017 lossless test images in ../shared/data it is 91.64/92.82/93.41/92.72%
    (tests/test_pretrained_cifar.py)."""
    return Weights(
        model=f"resnet{depth}",
        tag="akamaster",
        url=f"{_AKAMASTER}resnet{depth}-{sha256[:8]}.th",
        sha256=sha256,
        layout="cifar_6n2",
        options={},  # option A, the CIFAR default
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dataset="cifar10",
        top1=top1,
        top5=None,
        evaluation="CIFAR-10 test, 32x32 as is; the README's figure, not measured on the file (last epoch's weights)",
        protocol="single",
        licence="BSD-2-Clause",
        source=_AKAMASTER_SOURCE,
    )


def _mmpretrain_cifar(depth: int, prefix: str, top1: float) -> Weights:
    return Weights(
        model=f"resnet{depth}_cifar",
        tag="mmpretrain",
        url=f"{_MMPRETRAIN}resnet{depth}_b16x8_cifar10_20210528-{prefix}.pth",
        sha256=prefix,
        layout="mmpretrain",
        options={},  # the spec is mmpretrain's ResNet_CIFAR already
        mean=MMPRETRAIN_CIFAR_MEAN,
        std=MMPRETRAIN_CIFAR_STD,
        dataset="cifar10",
        top1=top1,
        top5=None,
        evaluation="CIFAR-10 test, 32x32 as is",
        protocol="single",
        licence="Apache-2.0",
        source=_MMPRETRAIN_SOURCE,
    )


def _mmpretrain_v1d(depth: int, prefix: str, top1: float, top5: float) -> Weights:
    return Weights(
        model=f"resnet{depth}_v1d",
        tag="mmpretrain",
        url=f"{_MMPRETRAIN}resnetv1d{depth}_b32x8_imagenet_20210531-{prefix}.pth",
        sha256=prefix,
        layout="mmpretrain",
        options={},
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dataset="imagenet2012",
        top1=top1,
        top5=top5,
        evaluation="ImageNet val, resize 256 (pillow), centre crop 224",
        protocol="1crop",
        licence="Apache-2.0",
        source=_MMPRETRAIN_SOURCE,
        one_crop_side=256,
    )


WEIGHTS: tuple[Weights, ...] = (
    _torchvision(18, 1, "f37072fd", 69.758, 89.078),
    _torchvision(34, 1, "b627a593", 73.314, 91.420),
    _torchvision(50, 1, "0676ba61", 76.130, 92.862),
    _torchvision(50, 2, "11ad3fa6", 80.858, 95.434),
    _torchvision(101, 1, "63fe2227", 77.374, 93.546),
    _torchvision(101, 2, "cd907fc2", 81.886, 95.780),
    _torchvision(152, 1, "394f9c45", 78.312, 94.046),
    _torchvision(152, 2, "f82ba261", 82.284, 96.002),
    _akamaster(20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.73),
    _akamaster(32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.63),
    _akamaster(44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 93.10),
    _akamaster(56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.39),
    _akamaster(110, "1d1ed7c2", 93.68),
    _akamaster(1202, "f3b1deed", 93.82),
    _mmpretrain_cifar(18, "bd6371c8", 94.82),
    _mmpretrain_cifar(34, "a8aa36a6", 95.34),
    _mmpretrain_cifar(50, "f54bfad9", 95.55),
    _mmpretrain_cifar(101, "2d29e936", 95.58),
    _mmpretrain_cifar(152, "3e8e9178", 95.76),
    _mmpretrain_v1d(50, "db14775a", 77.54, 93.57),
    _mmpretrain_v1d(101, "6e13bcd3", 78.93, 94.48),
    _mmpretrain_v1d(152, "278cf22a", 79.41, 94.70),
)
"""Every published weight file we load, one entry each."""

_BY_NAME = {w.name: w for w in WEIGHTS}


def get(model: str, tag: str) -> Weights:
    """The entry of `model`'s weights `tag`; ConfigError listing what there is otherwise."""
    entry = _BY_NAME.get(f"{model}:{tag}")
    if entry is None:
        offered = [w.tag for w in WEIGHTS if w.model == model]
        have = f"{model} has {', '.join(offered)}" if offered else f"{model} has no published weights here"
        raise ConfigError(
            f"No weights {model}:{tag}: {have}. Every entry: python -c 'from resnet_jax import pretrained; "
            f"print(pretrained.names())'."
        )
    return entry


def parse(name: str) -> Weights:
    """The entry named 'MODEL:TAG' (as `--weights` and `config.init_from` give it)."""
    model, sep, tag = name.partition(":")
    if not sep:
        raise ConfigError(f"Weights {name!r}: give MODEL:TAG, e.g. resnet50:torchvision_v1 or resnet20:akamaster.")
    return get(model, tag)


def names() -> list[str]:
    """'MODEL:TAG' of every entry."""
    return [w.name for w in WEIGHTS]
