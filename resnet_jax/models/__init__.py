"""Every network of He et al. (2016), by name.

    from resnet_jax.models import MODEL_NAMES, create_model, spec
    model = create_model("resnet50", num_classes=1000)     # a flax.linen Module
    spec("resnet50").input_shape                            # (224, 224, 3)

`resnet.py` holds the one `ResNet` module and its blocks, `specs.py` one explicit entry per named net,
`batch_norm.py` the grouped BatchNorm, `flops.py` what a net costs. The library that computes the convolutions is
chosen in `resnet_jax.kernels`; the weights to and from PyTorch are `resnet_jax.interop`'s.
This package imports JAX, Flax and NumPy only (no training stack).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from resnet_jax.kernels import batch_norm as bn_kernel
from resnet_jax.kernels import conv
from resnet_jax.models.resnet import BasicBlock, BottleneckBlock, ResNet
from resnet_jax.models.specs import SPECS, ModelSpec

__all__ = ["MODEL_NAMES", "BasicBlock", "BottleneckBlock", "ModelSpec", "ResNet", "create_model", "spec"]

MODEL_NAMES: tuple[str, ...] = tuple(SPECS)
"""Every named network: ImageNet `resnet18..152`, `plain18..152`, `resnet50_v1d..152_v1d`; CIFAR `resnet20..1202`,
`plain20..110` (the paper's 6n+2 nets) and `resnet18_cifar..resnet152_cifar` (the ImageNet nets with a CIFAR
stem, mmpretrain's)."""

_OPTIONS = {
    "shortcut": ("A", "B", "C"),
    "stride_on_3x3": (False, True),
    "zero_init_last_bn": (False, True),
    "remat": (False, True),
    "bn_unbiased_var": (False, True),
    "dtype": ("float32", "bfloat16", "float16"),
    "conv_impl": conv.CONV_IMPLS,
    "bn_impl": bn_kernel.BN_IMPLS,
}
_FREE_OPTIONS = ("bn_group_size", "bn_momentum", "bn_epsilon")


def spec(name: str) -> ModelSpec:
    """The entry of network `name`; ValueError listing the valid names otherwise."""
    if name not in SPECS:
        raise ValueError(f"Unknown model {name!r}. Valid names: {', '.join(MODEL_NAMES)}.")
    return SPECS[name]


def create_model(name: str, *, num_classes: int, **options: Any) -> ResNet:
    """Builds a named network.

    Args:
      name: one of `MODEL_NAMES`.
      num_classes: output width (1000 for ImageNet, 10 for CIFAR-10).
      **options: `shortcut` ('A'|'B'|'C'; default B for ImageNet nets, A for CIFAR), `stride_on_3x3` (v1.5),
        `zero_init_last_bn`, `remat`, `dtype` ('float32'|'bfloat16'|'float16' or a dtype), `conv_impl`
        and `bn_impl` ('auto'|'xla'|'onednn'), `bn_group_size`, `bn_momentum`, `bn_epsilon`, `bn_unbiased_var`.

    Raises:
      ValueError: for an unknown name, option or option value; the message lists the valid ones. For
        `conv_impl` or `bn_impl` 'onednn' where oneDNN does not load, what failed and how to install it.
    """
    entry = spec(name)
    for key, value in options.items():
        if key in _FREE_OPTIONS:
            continue
        if key not in _OPTIONS:
            raise ValueError(
                f"Unknown option {key!r} for create_model. Valid options: {', '.join((*_OPTIONS, *_FREE_OPTIONS))}."
            )
        if key == "dtype":
            value = jnp.dtype(value).name
        if value not in _OPTIONS[key]:
            raise ValueError(f"Invalid value {value!r} for option {key!r}. Valid values: {_OPTIONS[key]}.")
    conv.check(options.get("conv_impl", "auto"))  # oneDNN, if asked for, loads
    bn_kernel.check(options.get("bn_impl", "auto"))
    if "dtype" in options:
        options["dtype"] = jnp.dtype(options["dtype"])
    return entry.build(num_classes, **options)
