"""Published ResNet weights by name: downloaded once, verified, cached, converted into our models.

    from resnet_jax import pretrained
    model, variables, entry = pretrained.load("resnet50", "torchvision_v1")
    logits = model.apply(variables, images, train=False)   # images normalised with entry.mean / entry.std (0..255)

    model, variables, entry = pretrained.load("resnet20", "akamaster", num_classes=100)  # a fresh head: fine-tuning

`registry.py` holds one entry per published file (URL, hash, options, normalisation, published accuracy, licence),
`download.py` the cache and mirror. PyTorch files are read without torch and without running code from them
(`resnet_jax.interop.torch_files`). `python -m resnet_jax.evaluate --weights=resnet20:akamaster` evaluates an entry on
a prepared dataset; `config.init_from` starts a training run from one.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import models
from resnet_jax.core.errors import ConfigError, WeightsError
from resnet_jax.interop import convert
from resnet_jax.pretrained.download import CACHE_ENV, MIRROR_ENV, cache_dir, fetch
from resnet_jax.pretrained.registry import WEIGHTS, Weights, get, names, parse

__all__ = [
    "CACHE_ENV",
    "MIRROR_ENV",
    "STRUCTURAL",
    "WEIGHTS",
    "Weights",
    "cache_dir",
    "fetch",
    "get",
    "head_width",
    "load",
    "names",
    "parse",
    "structural_options",
    "with_new_head",
]

STRUCTURAL = ("shortcut", "stride_on_3x3")
"""The `create_model` options that change what weights compute: an entry's, never overridden."""


def load(
    model_name: str,
    weights: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    **options: Any,
) -> tuple[nn.Module, dict[str, Any], Weights]:
    """The model, its variables ({'params', 'batch_stats'}) and the registry entry of published weights.

    Args:
      model_name: one of `resnet_jax.models.MODEL_NAMES`.
      weights: the entry's tag ('torchvision_v1', 'akamaster', ...; `names()` lists every 'MODEL:TAG').
      cache_dir: where files are kept (default $RESNET_JAX_CACHE, else ~/.cache/resnet_jax/weights).
      num_classes: another head width than the weights' (their dataset's): the classifier is freshly initialised
        from `seed` as the model's own init does (LeCun-normal kernel, zero bias), the backbone is the weights'.
      **options: other `create_model` options (dtype, remat, BN momentum...). Those that change what the weights
        compute (shortcut, stride_on_3x3) are the entry's and cannot be overridden.

    Raises:
      ConfigError: an unknown entry, or an option that contradicts it.
      WeightsError: the file cannot be had or does not verify (`download.fetch`).
    """
    entry = get(model_name, weights)
    for key, wanted in structural_options(entry).items():
        if key in options and options[key] != wanted:
            raise ConfigError(f"{entry.name} was trained with {key}={wanted!r}; drop {key}={options[key]!r}.")
    path = fetch(entry, cache_dir)
    try:
        state_dict = convert.read_state_dict(path)
    except Exception as error:  # noqa: BLE001 - a verified file that still does not read: say which and why
        raise WeightsError(f"{path} (verified {entry.name}) cannot be read as a PyTorch state dict: {error}") from None
    variables = convert.load_torch_state_dict(model_name, state_dict, layout=entry.layout, **entry.options)
    trained_classes = head_width(variables)
    num_classes = num_classes or trained_classes
    model = models.create_model(model_name, num_classes=num_classes, **{**options, **entry.options})
    if num_classes != trained_classes:
        variables = with_new_head(variables, num_classes, seed)
    return model, variables, entry


def structural_options(entry: Weights) -> dict[str, Any]:
    """The values of `STRUCTURAL` that `entry`'s weights were trained with: its own, else its net's defaults."""
    return {key: entry.options.get(key, models.spec(entry.model).default(key)) for key in STRUCTURAL}


def head_width(variables: dict[str, Any]) -> int:
    """The number of classes the classifier `fc` of `variables` scores."""
    return int(variables["params"]["fc"]["bias"].shape[0])


def with_new_head(variables: dict[str, Any], num_classes: int, seed: int = 0) -> dict[str, Any]:
    """`variables` with the classifier `fc` replaced by a fresh one of `num_classes` outputs (the backbone kept)."""
    kernel = variables["params"]["fc"]["kernel"]
    head = nn.Dense(num_classes).init(jax.random.key(seed), jnp.zeros((1, kernel.shape[0]), kernel.dtype))
    return {**variables, "params": {**variables["params"], "fc": head["params"]}}
