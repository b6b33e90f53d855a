"""Top-1 and top-5 error under the paper's test protocols (batch formats: `resnet_jax.data.protocols`).

Views of one example are scored by averaging softmax outputs: over the 10 crops, or over the valid positions of the
fully-convolutional score map and then over the five scales. Padding examples (mask False) count nowhere, so every
example of the split is counted exactly once whatever the batch size or number of hosts.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from resnet_jax.data.protocols import MULTISCALE_SIDES, STRIDE
from resnet_jax.data import put_on_mesh
from resnet_jax.sharding import batch_sharded, replicated


def _error_counts(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    top5 = jax.lax.top_k(scores, 5)[1]
    top1_wrong = top5[:, 0] != labels
    top5_wrong = ~jnp.any(top5 == labels[:, None], axis=-1)
    return {"examples": jnp.sum(mask), "top1_errors": jnp.sum(top1_wrong & mask),
            "top5_errors": jnp.sum(top5_wrong & mask)}


def _view_scores(model: nn.Module, variables: Any, batch: dict) -> jax.Array:
    images = batch["image"]  # [b, V, H, W, 3]
    logits = model.apply(variables, images.reshape(-1, *images.shape[2:]), train=False)
    return jax.nn.softmax(logits).reshape(*images.shape[:2], -1).mean(axis=1)


def _multiscale_scores(model: nn.Module, variables: Any, batch: dict) -> jax.Array:
    fc = variables["params"]["fc"]
    per_scale = []
    for side in MULTISCALE_SIDES:
        features = model.apply(variables, batch[f"image_{side}"], train=False, features=True)
        last = features[max(features)]  # C5: one position per STRIDE x STRIDE pixels
        scores = jax.nn.softmax(last.astype(jnp.float32) @ fc["kernel"] + fc["bias"])
        valid = batch[f"valid_{side}"][:, ::STRIDE, ::STRIDE, None]
        per_scale.append(jnp.sum(scores * valid, (1, 2)) / jnp.maximum(jnp.sum(valid, (1, 2)), 1))
    return jnp.mean(jnp.stack(per_scale), axis=0)


def make_eval_step(model: nn.Module, protocol: str, mesh: Mesh) -> Callable[[Any, dict], dict[str, jax.Array]]:
    """`step(variables, batch) -> {examples, top1_errors, top5_errors}` summed over the (global) batch."""
    score = _multiscale_scores if protocol == "multiscale" else _view_scores

    def step(variables: Any, batch: dict) -> dict[str, jax.Array]:
        return _error_counts(score(model, variables, batch), batch["label"], batch["mask"])

    return jax.jit(step, in_shardings=(replicated(mesh), batch_sharded(mesh)), out_shardings=replicated(mesh))


def evaluate(model: nn.Module, variables: Any, batches: Iterable[dict], protocol: str,
             mesh: Mesh) -> dict[str, float]:
    """Runs `protocol` over host-local `batches`; returns errors as fractions and the number of examples."""
    step = make_eval_step(model, protocol, mesh)
    totals = None
    for batch in batches:
        counts = step(variables, put_on_mesh(batch, mesh))
        totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    if totals is None:
        raise ValueError("The evaluation split yielded no batches.")
    totals = jax.tree.map(lambda x: int(np.asarray(x)), totals)
    return {"top1_error": totals["top1_errors"] / totals["examples"],
            "top5_error": totals["top5_errors"] / totals["examples"], "examples": totals["examples"]}
