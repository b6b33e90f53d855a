"""Our linen nets inside a `flax.nnx` program, through flax's own bridge (`nnx.bridge.ToNNX`).

    from resnet_jax import pretrained
    from resnet_jax.interop.nnx_bridge import to_nnx
    model, variables, entry = pretrained.load("resnet20", "akamaster", num_classes=100)
    net = to_nnx(model, variables)                         # an nnx.Module holding nnx.Param / nnx.BatchStat
    logits = net(images, train=False)                      # inference: BN's running statistics
    logits = net(images, train=True, mutable=["batch_stats"])  # training: BN's statistics updated in place

The bridge keeps the linen module as it is (every test of it still holds) and stores its collections as nnx
Variables by module path: `params` become `nnx.Param` (what `nnx.Optimizer(net, tx, wrt=nnx.Param)` and
`nnx.value_and_grad` see) and `batch_stats` `nnx.BatchStat`. `examples/nnx_transfer.py` is a whole fine-tuning
step. `to_linen_variables` gives back {'params', 'batch_stats'} for our checkpoints and `convert.py`.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax.numpy as jnp
from flax import nnx
from flax.nnx import traversals


def to_nnx(model: nn.Module, variables: dict[str, Any] | None = None, seed: int = 0) -> nnx.Module:
    """`model` (one of ours) as an initialised nnx module, holding `variables` ({'params', 'batch_stats'}) if given.

    Raises:
      ValueError: `variables` lacks a tensor of the model, has one it lacks, or one of another shape.
    """
    net = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(seed))
    # The variables' shapes do not depend on the image size: 32x32 (any net's smallest) is the cheapest init.
    nnx.bridge.lazy_init(net, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
    if variables is not None:
        _load(net, variables)
    return net


def to_linen_variables(net: nnx.Module) -> dict[str, Any]:
    """{'params': ..., 'batch_stats': ...} of a module `to_nnx` made (the inverse of loading them)."""
    state = nnx.state(net, nnx.Not(nnx.RngState))
    return flax.core.unfreeze(nnx.bridge.variables.nnx_attrs_to_linen_vars(state))


def _load(net: nnx.Module, variables: dict[str, Any]) -> None:
    # The bridge merges the collections by module path; nnx.update would add unknown names silently, so check first.
    new: dict[tuple, Any] = {}
    for collection in ("params", "batch_stats"):
        new.update(traversals.flatten_mapping(flax.core.unfreeze(variables[collection])))
    current = traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(net, nnx.Not(nnx.RngState))))
    if set(new) != set(current):
        missing, unused = sorted(set(current) - set(new)), sorted(set(new) - set(current))
        raise ValueError(f"The variables do not fit the model: missing {missing[:5]}, unused {unused[:5]}.")
    wrong = {p: (jnp.shape(new[p]), current[p].shape) for p in current if jnp.shape(new[p]) != current[p].shape}
    if wrong:
        raise ValueError(f"The variables do not fit the model (shape given, needed): {wrong}.")
    nnx.update(net, traversals.unflatten_mapping(new))
