"""One explicit entry per named network: how it is built and what it is (timm's pattern: nothing is inferred).

Each `ModelSpec` gives the `ResNet` fields of its net, the dataset whose images it takes (hence its input shape and
default classes), the PyTorch naming its weights convert from and to, and its parameter count as a public source
prints it. `create_model` and every tool that needs to know something about a net by its name ask `spec(name)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from resnet_jax.data import datasets
from resnet_jax.models.resnet import BasicBlock, BottleneckBlock, ResNet

TorchLayout = Literal["torchvision", "cifar_6n2", "mmpretrain"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A named network.

    Attributes:
      name: its name in `MODEL_NAMES`.
      fields: the `ResNet` fields that make it (stages, block, widths, stem, shortcut, ...); `create_model`'s options
        override the option fields (shortcut, stride_on_3x3, ...).
      dataset: the dataset whose images it takes (`resnet_jax.data.datasets`): its input shape and default classes.
      torch_layout: the PyTorch state-dict naming its weights convert from and to (`resnet_jax.convert`):
        'torchvision' (classifier `fc`), 'cifar_6n2' (akamaster/pytorch_resnet_cifar10's, classifier `linear`) or
        'mmpretrain' (the v1d nets: mmpretrain's ResNetV1d, under `backbone.` and `head.fc`); None where no public
        PyTorch code names it.
      parameters: its parameter count (with its dataset's classes) as a public source prints it: exact ("269722"),
        or rounded to millions ("1.7M"); empty where no source gives one.
      parameters_source: that source.
    """

    name: str
    fields: Mapping[str, Any]
    dataset: str
    torch_layout: TorchLayout | None
    parameters: str = ""
    parameters_source: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one training image: its dataset's (32x32 for CIFAR, the 224x224 crop for ImageNet)."""
        return datasets.get(self.dataset).image_shape

    @property
    def num_classes(self) -> int:
        """Its classifier's width on its dataset (10 or 1000)."""
        return datasets.get(self.dataset).num_classes

    def default(self, option: str) -> Any:
        """The value `create_model(name)` gives `option` when it is not passed (e.g. 'shortcut': 'A' for CIFAR)."""
        return self.fields.get(option, getattr(ResNet, option))

    def build(self, num_classes: int, **options: Any) -> ResNet:
        return ResNet(num_classes=num_classes, **{**self.fields, **options})


def _stages(depth: int) -> dict[str, Any]:
    """Table 1's stages of the ImageNet net of `depth` layers."""
    stage_sizes, block_cls = {
        18: ((2, 2, 2, 2), BasicBlock),
        34: ((3, 4, 6, 3), BasicBlock),
        50: ((3, 4, 6, 3), BottleneckBlock),
        101: ((3, 4, 23, 3), BottleneckBlock),
        152: ((3, 8, 36, 3), BottleneckBlock),
    }[depth]
    return {"stage_sizes": stage_sizes, "block_cls": block_cls}


def _six_n_plus_2(depth: int) -> dict[str, Any]:
    """Section 4.2's CIFAR net of `depth` = 6n+2 layers: n blocks on each of 16, 32 and 64 channels, option A."""
    n = (depth - 2) // 6
    return {"stage_sizes": (n,) * 3, "block_cls": BasicBlock, "widths": (16, 32, 64), "stem": "cifar", "shortcut": "A"}


_PLAIN = {"residual": False}
_V1D = {"stem": "deep", "avg_down": True, "stride_on_3x3": True}  # mmpretrain's ResNetV1D
# The ImageNet stages behind a 3x3 stride-1 stem without max pool (mmpretrain's ResNet_CIFAR); its bottlenecks put
# the stride on the 3x3.
_CIFAR_STEM = {"stem": "cifar"}
_CIFAR_STEM_3X3 = {"stem": "cifar", "stride_on_3x3": True}

_TORCHVISION = "torchvision's IMAGENET1K_V1 weights (num_params)"
_AKAMASTER = "akamaster/pytorch_resnet_cifar10's weights"
_TABLE6 = "the paper's Table 6"
_MMPRETRAIN = "mmpretrain's model table"


def _spec(name: str, fields: dict, dataset: str, layout: TorchLayout | None, parameters="", source="") -> ModelSpec:
    return ModelSpec(name, fields, dataset, layout, parameters, source)


_IMAGENET, _CIFAR10 = "imagenet2012", "cifar10"
SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        # ImageNet (Table 1); option B and the stride on the first 1x1 ("v1"), as the authors' release.
        _spec("resnet18", _stages(18), _IMAGENET, "torchvision", "11689512", _TORCHVISION),
        _spec("plain18", {**_stages(18), **_PLAIN}, _IMAGENET, "torchvision"),
        _spec("resnet34", _stages(34), _IMAGENET, "torchvision", "21797672", _TORCHVISION),
        _spec("plain34", {**_stages(34), **_PLAIN}, _IMAGENET, "torchvision"),
        _spec("resnet50", _stages(50), _IMAGENET, "torchvision", "25557032", _TORCHVISION),
        _spec("plain50", {**_stages(50), **_PLAIN}, _IMAGENET, "torchvision"),
        _spec("resnet101", _stages(101), _IMAGENET, "torchvision", "44549160", _TORCHVISION),
        _spec("plain101", {**_stages(101), **_PLAIN}, _IMAGENET, "torchvision"),
        _spec("resnet152", _stages(152), _IMAGENET, "torchvision", "60192808", _TORCHVISION),
        _spec("plain152", {**_stages(152), **_PLAIN}, _IMAGENET, "torchvision"),
        _spec("resnet50_v1d", {**_stages(50), **_V1D}, _IMAGENET, "mmpretrain", "25.58M", _MMPRETRAIN),
        _spec("resnet101_v1d", {**_stages(101), **_V1D}, _IMAGENET, "mmpretrain", "44.57M", _MMPRETRAIN),
        _spec("resnet152_v1d", {**_stages(152), **_V1D}, _IMAGENET, "mmpretrain", "60.21M", _MMPRETRAIN),
        _spec("resnet18_cifar", {**_stages(18), **_CIFAR_STEM}, _CIFAR10, "torchvision", "11.17M", _MMPRETRAIN),
        _spec("resnet34_cifar", {**_stages(34), **_CIFAR_STEM}, _CIFAR10, "torchvision", "21.28M", _MMPRETRAIN),
        _spec("resnet50_cifar", {**_stages(50), **_CIFAR_STEM_3X3}, _CIFAR10, "torchvision", "23.52M", _MMPRETRAIN),
        _spec("resnet101_cifar", {**_stages(101), **_CIFAR_STEM_3X3}, _CIFAR10, "torchvision", "42.51M", _MMPRETRAIN),
        _spec("resnet152_cifar", {**_stages(152), **_CIFAR_STEM_3X3}, _CIFAR10, "torchvision", "58.16M", _MMPRETRAIN),
        # CIFAR-10 (Section 4.2): 6n+2 layers, option A, so a plain net has its ResNet's parameters.
        _spec("resnet20", _six_n_plus_2(20), _CIFAR10, "cifar_6n2", "269722", _AKAMASTER),
        _spec("plain20", {**_six_n_plus_2(20), **_PLAIN}, _CIFAR10, "cifar_6n2"),
        _spec("resnet32", _six_n_plus_2(32), _CIFAR10, "cifar_6n2", "464154", _AKAMASTER),
        _spec("plain32", {**_six_n_plus_2(32), **_PLAIN}, _CIFAR10, "cifar_6n2"),
        _spec("resnet44", _six_n_plus_2(44), _CIFAR10, "cifar_6n2", "658586", _AKAMASTER),
        _spec("plain44", {**_six_n_plus_2(44), **_PLAIN}, _CIFAR10, "cifar_6n2"),
        _spec("resnet56", _six_n_plus_2(56), _CIFAR10, "cifar_6n2", "853018", _AKAMASTER),
        _spec("plain56", {**_six_n_plus_2(56), **_PLAIN}, _CIFAR10, "cifar_6n2"),
        _spec("resnet110", _six_n_plus_2(110), _CIFAR10, "cifar_6n2", "1.7M", _TABLE6),
        _spec("plain110", {**_six_n_plus_2(110), **_PLAIN}, _CIFAR10, "cifar_6n2"),
        _spec("resnet1202", _six_n_plus_2(1202), _CIFAR10, "cifar_6n2", "19.4M", _TABLE6),
    )
}
