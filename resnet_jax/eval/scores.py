"""Top-1 and top-5 errors of one batch under the paper's test protocols (the model computes its own score map).

Views of one example are scored by averaging softmax outputs: over the 10 crops, or over the scales (and mirrors) of
the fully-convolutional protocol (`models.ResNet` computes the score map). Padding examples (mask False) count
nowhere, so every example of the split is counted exactly once whatever the batch size or number of hosts. Batch
formats: `resnet_jax.data.protocols`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.data.protocols import MULTISCALE_SIDES


def _error_counts(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    top5 = jax.lax.top_k(scores, 5)[1]
    top1_wrong = top5[:, 0] != labels
    top5_wrong = ~jnp.any(top5 == labels[:, None], axis=-1)
    return {
        "examples": jnp.sum(mask),
        "top1_errors": jnp.sum(top1_wrong & mask),
        "top5_errors": jnp.sum(top5_wrong & mask),
    }


def _view_scores(model: nn.Module, variables: Any, batch: dict) -> jax.Array:
    """The views' softmax averaged, one view of the whole batch at a time (a loop in the program): the memory of one
    view's pass at the evaluation batch, not of all ten crops at once (2,560 ImageNet passes at batch 256)."""
    images = batch["image"]  # [b, V, H, W, 3]
    if images.shape[1] == 1:
        return jax.nn.softmax(model.apply(variables, images[:, 0], train=False))
    posteriors = jax.lax.map(
        lambda view: jax.nn.softmax(model.apply(variables, view, train=False)), jnp.moveaxis(images, 1, 0)
    )
    return posteriors.mean(axis=0)


def mirror_on_canvas(canvas: jax.Array, valid: jax.Array) -> jax.Array:
    """Each image of a batch of canvases mirrored in place: flipped left-right within its own width, still in the
    top-left corner (the mirror's score map then aligns as the image's does)."""
    width = jnp.sum(valid[:, 0, :], axis=1)  # the image's width: the valid pixels of its first row
    columns = jnp.arange(canvas.shape[2])
    source = jnp.clip(width[:, None] - 1 - columns[None, :], 0, canvas.shape[2] - 1)
    mirrored = jnp.take_along_axis(canvas, source[:, None, :, None], axis=2)
    return jnp.where(valid[..., None], mirrored, 0)


def multiscale_scores(model: nn.Module, variables: Any, batch: dict) -> jax.Array:
    """Table 4's fully-convolutional multi-scale testing: for each scale and for the image and its mirror, the class
    scores averaged over the score map's positions, then their softmax averaged over the ten."""
    posteriors = []
    for side in MULTISCALE_SIDES:
        canvas, valid = batch[f"image_{side}"], batch[f"valid_{side}"]
        for image in (canvas, mirror_on_canvas(canvas, valid)):
            scores, positions = model.apply(variables, image, train=False, score_map=True, valid=valid)
            weights = positions[..., None].astype(jnp.float32)
            mean = jnp.sum(scores * weights, (1, 2)) / jnp.maximum(jnp.sum(weights, (1, 2)), 1)
            posteriors.append(jax.nn.softmax(mean))
    return jnp.mean(jnp.stack(posteriors), axis=0)


def error_counts(model: nn.Module, protocol: str, variables: Any, batch: dict) -> dict[str, jax.Array]:
    """{examples, top1_errors, top5_errors} of one batch of `protocol`, summed over its masked-in examples."""
    score = multiscale_scores if protocol == "multiscale" else _view_scores
    return _error_counts(score(model, variables, batch), batch["label"], batch["mask"])
