"""Weights to and from PyTorch state dicts, without needing torch.

Three layouts are understood: torchvision's ImageNet ResNets (`conv1`, `layer1.0.downsample.0`, `fc`), the public
CIFAR-10 ResNets of Section 4.2 (akamaster/pytorch_resnet_cifar10: the same names, `linear` for the classifier, no
parameters in option-A shortcuts) and mmpretrain's (torchvision's names under `backbone.`, the classifier `head.fc`;
its ResNetV1d adds the deep stem `stem.0..2.{conv,bn}` and, after the average pool of a strided shortcut,
`downsample.1` / `downsample.2`). Names are derived from our own variable tree, so every tensor of the model must be
present in the state dict and every tensor of the state dict must be used, or conversion fails naming the tensor.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import models
from resnet_jax.interop.torch_files import read_torch_file, state_dict_of
from resnet_jax.models.specs import TorchLayout

# Flax leaf name -> PyTorch parameter or buffer name.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_IGNORED_TORCH_SUFFIXES = ("num_batches_tracked",)  # a BN step counter with no counterpart here
# The PyTorch namings understood (`specs.py` gives each net's default) and the classifier weight each one has.
TORCH_LAYOUTS: tuple[str, ...] = typing.get_args(TorchLayout)
_CLASSIFIERS = {"torchvision": "fc.weight", "cifar_6n2": "linear.weight", "mmpretrain": "head.fc.weight"}
_TORCH_SUFFIXES = (".pth", ".pt", ".th")  # what torch.save writes, read by torch_files


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a state dict saved as `.npz`, `.safetensors` or by `torch.save` (`.pth`, `.pt`, `.th`) into NumPy arrays.

    torch files are read without torch and without running their code (`torch_files.read_torch_file`, which refuses
    a file that holds more than tensors); of a checkpoint dict ('state_dict', 'model') only the state dict is kept,
    without its `module.` prefix.
    """
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    if path.suffix in _TORCH_SUFFIXES:
        return state_dict_of(read_torch_file(path))
    raise ValueError(
        f"Cannot read {path}: expected a .npz, .safetensors or torch.save file ({', '.join(_TORCH_SUFFIXES)}). "
        "Rename a torch.save file to .pth, or convert it with "
        "`safetensors.torch.save_file(torch.load(path), 'weights.safetensors')`."
    )


def _layout(model_name: str, layout: str | None) -> str:
    layout = layout or models.spec(model_name).torch_layout
    if layout not in TORCH_LAYOUTS:
        raise ValueError(
            f"Unknown PyTorch layout {layout!r} for {model_name} (specs.py gives none, or it is misspelt): "
            f"pass layout= one of {TORCH_LAYOUTS}."
        )
    return layout


def _torch_name(model_name: str, path: tuple[str, ...], layout: str) -> str:
    if layout == "mmpretrain":
        return _mmpretrain_name(model_name, path)
    if any(p.startswith("stem_") for p in path):
        raise ValueError(
            f"{model_name} has a deep (v1d) stem, which has no {layout} layout to convert: use layout='mmpretrain'."
        )
    parts: list[str] = []
    for i, key in enumerate(path[:-1]):
        block = re.fullmatch(r"layer(\d+)_(\d+)", key)
        if block:
            parts += [f"layer{block[1]}", block[2]]
        elif i > 0 and path[i - 1] == "downsample":
            parts.append({"conv": "0", "bn": "1"}[key])
        elif key == "fc" and layout == "cifar_6n2":
            parts.append("linear")
        else:
            parts.append(key)
    return ".".join(parts + [_LEAF_NAMES[path[-1]]])


def _mmpretrain_name(model_name: str, path: tuple[str, ...]) -> str:
    """mmpretrain's name: torchvision's under `backbone.` (the classifier `head.fc`), ConvModules `stem.K.conv/bn`
    for the deep stem, and the projection one index later where an AvgPool2d leads the shortcut's Sequential."""
    leaf = _LEAF_NAMES[path[-1]]
    if path[0] == "fc":
        return f"head.fc.{leaf}"
    stem = re.fullmatch(r"stem_(conv|bn)(\d)", path[0])
    if stem:
        return f"backbone.stem.{int(stem[2]) - 1}.{stem[1]}.{leaf}"
    name = _torch_name(model_name, path, "torchvision")
    block = re.fullmatch(r"layer(\d+)_(\d+)", path[0])
    # Our ResNet strides the first block of every stage after the first; mmpretrain's ResLayer then puts
    # AvgPool2d(stride) at downsample.0 when avg_down is set.
    pooled = models.spec(model_name).default("avg_down") and block and block[1] != "1" and block[2] == "0"
    if pooled and "downsample" in path:
        name = re.sub(r"\.downsample\.(\d)\.", lambda m: f".downsample.{int(m[1]) + 1}.", name)
    return "backbone." + name


def _to_torch(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:  # conv kernel (H, W, in, out) -> (out, in, H, W)
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
    if array.ndim == 2:  # dense kernel (in, out) -> (out, in)
        return np.ascontiguousarray(array.T)
    return array


def _from_torch(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return array


def _template(model_name: str, num_classes: int, **options: Any) -> dict[str, Any]:
    model = models.create_model(model_name, num_classes=num_classes, **options)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *models.spec(model_name).input_shape))))


def detect_layout(model_name: str, state_dict: Mapping[str, Any]) -> str:
    """The layout of `state_dict`'s names: mmpretrain's when they start with `backbone.` (after DataParallel's
    `module.`), otherwise the one `specs.py` gives `model_name`."""
    if any(k.removeprefix("module.").startswith("backbone.") for k in state_dict):
        return "mmpretrain"
    return _layout(model_name, None)


def load_torch_state_dict(
    model_name: str, state_dict: Mapping[str, np.ndarray], *, layout: str | None = None, **options: Any
) -> dict[str, Any]:
    """Converts a PyTorch state dict into `{"params": ..., "batch_stats": ...}` for `create_model(model_name)`.

    Args:
      model_name: one of `models.MODEL_NAMES`.
      state_dict: PyTorch names (an optional `module.` prefix from DataParallel is dropped) to arrays.
      layout: one of `TORCH_LAYOUTS`; by default recognised from the names (`detect_layout`).
      **options: `create_model` options that change the set of tensors, e.g. `shortcut='A'`. torchvision's and
        mmpretrain's ImageNet nets are v1.5: build the model with `stride_on_3x3=True` to reproduce their outputs.

    Raises:
      ValueError: naming every missing or unused tensor, or the first tensor whose shape differs.
    """
    state = {k.removeprefix("module."): np.asarray(v) for k, v in state_dict.items()}
    layout = _layout(model_name, layout) if layout else detect_layout(model_name, state)
    classifier = _CLASSIFIERS[layout]
    if classifier not in state:
        raise ValueError(
            f"State dict has no {classifier!r}: it is not a {model_name} state dict in {layout} layout. "
            f"Keys start with: {sorted(state)[:5]}"
        )
    template = _template(model_name, state[classifier].shape[0], **options)

    flat = flax.traverse_util.flatten_dict(template)
    names = {path: _torch_name(model_name, path[1:], layout) for path in flat}
    missing = sorted(set(names.values()) - set(state))
    unused = sorted(k for k in set(state) - set(names.values()) if not k.endswith(_IGNORED_TORCH_SUFFIXES))
    if missing or unused:
        raise ValueError(
            f"State dict does not match {model_name} {options or ''} in {layout} layout: missing tensors {missing}, "
            f"unused tensors {unused}."
        )
    converted = {}
    for path, spec in flat.items():
        name = names[path]
        array = _from_torch(state[name]).astype(np.float32)
        if array.shape != spec.shape:
            raise ValueError(
                f"Tensor {name!r} has shape {state[name].shape}; {model_name} needs "
                f"{_to_torch(np.zeros(spec.shape)).shape} (PyTorch layout)."
            )
        converted[path] = jnp.asarray(array)
    return flax.traverse_util.unflatten_dict(converted)


def export_torch_state_dict(
    model_name: str, variables: Mapping[str, Any], *, layout: str | None = None
) -> dict[str, np.ndarray]:
    """The inverse of `load_torch_state_dict`: our variables as PyTorch names and layouts (`layout`: one of
    `TORCH_LAYOUTS`, by default the one `specs.py` gives `model_name`)."""
    layout = _layout(model_name, layout)
    flat = flax.traverse_util.flatten_dict({k: variables[k] for k in ("params", "batch_stats")})
    return {_torch_name(model_name, path[1:], layout): _to_torch(np.asarray(v, np.float32)) for path, v in flat.items()}
