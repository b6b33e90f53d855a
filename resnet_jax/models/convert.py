"""Weights to and from PyTorch state dicts, without needing torch.

Two layouts are understood: torchvision's ImageNet ResNets (`conv1`, `layer1.0.downsample.0`, `fc`) and the public
CIFAR-10 ResNets of Section 4.2 (akamaster/pytorch_resnet_cifar10: the same names, `linear` for the classifier, no
parameters in option-A shortcuts). Names are derived from our own variable tree, so every tensor of the model must be
present in the state dict and every tensor of the state dict must be used, or conversion fails naming the tensor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import models

# Flax leaf name -> PyTorch parameter or buffer name.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_IGNORED_TORCH_SUFFIXES = ("num_batches_tracked",)  # a BN step counter with no counterpart here


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a state dict saved as `.npz` or `.safetensors` into NumPy arrays."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    raise ValueError(
        f"Cannot read {path}: expected a .npz or .safetensors file. Convert a torch .pth with "
        "`safetensors.torch.save_file(torch.load(path), 'weights.safetensors')`."
    )


def _torch_name(model_name: str, path: tuple[str, ...]) -> str:
    if any(p.startswith("stem_") for p in path):
        raise ValueError(f"{model_name} has a deep (v1d) stem, which has no torchvision layout to convert.")
    parts: list[str] = []
    for i, key in enumerate(path[:-1]):
        block = re.fullmatch(r"layer(\d+)_(\d+)", key)
        if block:
            parts += [f"layer{block[1]}", block[2]]
        elif i > 0 and path[i - 1] == "downsample":
            parts.append({"conv": "0", "bn": "1"}[key])
        elif key == "fc" and models.spec(model_name).torch_layout == "cifar_6n2":
            parts.append("linear")
        else:
            parts.append(key)
    return ".".join(parts + [_LEAF_NAMES[path[-1]]])


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


def load_torch_state_dict(model_name: str, state_dict: Mapping[str, np.ndarray], **options: Any) -> dict[str, Any]:
    """Converts a PyTorch state dict into `{"params": ..., "batch_stats": ...}` for `create_model(model_name)`.

    Args:
      model_name: one of `models.MODEL_NAMES` (not the v1d nets).
      state_dict: PyTorch names (an optional `module.` prefix from DataParallel is dropped) to arrays.
      **options: `create_model` options that change the set of tensors, e.g. `shortcut='A'`. torchvision's nets are
        v1.5: build the model with `stride_on_3x3=True` to reproduce their outputs.

    Raises:
      ValueError: naming every missing or unused tensor, or the first tensor whose shape differs.
    """
    state = {k.removeprefix("module."): np.asarray(v) for k, v in state_dict.items()}
    classifier = "linear.weight" if models.spec(model_name).torch_layout == "cifar_6n2" else "fc.weight"
    if classifier not in state:
        raise ValueError(
            f"State dict has no {classifier!r}: it is not a {model_name} state dict. "
            f"Keys start with: {sorted(state)[:5]}"
        )
    template = _template(model_name, state[classifier].shape[0], **options)

    flat = flax.traverse_util.flatten_dict(template)
    names = {path: _torch_name(model_name, path[1:]) for path in flat}
    missing = sorted(set(names.values()) - set(state))
    unused = sorted(k for k in set(state) - set(names.values()) if not k.endswith(_IGNORED_TORCH_SUFFIXES))
    if missing or unused:
        raise ValueError(
            f"State dict does not match {model_name} {options or ''}: missing tensors {missing}, "
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


def export_torch_state_dict(model_name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of `load_torch_state_dict`: our variables as PyTorch names and layouts."""
    flat = flax.traverse_util.flatten_dict({k: variables[k] for k in ("params", "batch_stats")})
    return {_torch_name(model_name, path[1:]): _to_torch(np.asarray(v, np.float32)) for path, v in flat.items()}
