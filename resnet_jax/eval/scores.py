"""Top-1 and top-5 errors of one batch under the paper's test protocols (the model computes its own score map).

Views of one example are scored by averaging softmax outputs: over the 10 crops, or over the scales (and mirrors) of
the fully-convolutional protocol (`models.ResNet` computes the score map). Padding examples (mask False) count
nowhere, so every example of the split is counted exactly once whatever the batch size or number of hosts. Batch
formats: `resnet_jax.data.protocols`.

Memory: the model never sees more pixels at once than one 224x224 view of each example of the batch (a loop in the
program over the 10 crops; over slices of the batch at the multi-scale protocol's larger canvases), so every
protocol's passes need about the memory of 1-crop at the same batch; the batches themselves differ (protocols.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.data.protocols import MULTISCALE_SIDES
from resnet_jax.data.transforms import IMAGENET_CROP


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
    images = jnp.asarray(batch["image"])  # [b, V, H, W, 3]
    if images.shape[1] == 1:
        return jax.nn.softmax(model.apply(variables, images[:, 0], train=False))
    # Each view sliced out in the loop (not the batch transposed first, which would copy all of it).
    posteriors = jax.lax.map(
        lambda v: jax.nn.softmax(model.apply(variables, images[:, v], train=False)), jnp.arange(images.shape[1])
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


def slices_for(batch_size: int, height: int, width: int, devices: int = 1) -> int:
    """How many slices a batch of `batch_size` canvases of height x width is scored in: the fewest whose examples
    hold no more pixels than one 224x224 view of the whole batch, each slice an equal share of every device's
    examples (so the slices need no data to move between devices)."""
    local = batch_size // devices
    fits = [
        n for n in range(1, local + 1) if local % n == 0 and (local // n) * height * width <= local * IMAGENET_CROP**2
    ]
    return fits[0] if fits else local  # one example at a time when even that is larger than the budget


def _in_slices(f, slices: int, *arrays: jax.Array) -> jax.Array:
    """`f(*arrays)` over the batch axis, computed `slices` slices at a time (a loop in the program): slice j takes
    examples j, j + slices, j + 2 * slices, ..., every device's equal share; the results in the batch's order."""
    if slices == 1:
        return f(*arrays)
    b = arrays[0].shape[0]
    grouped = [jnp.asarray(a).reshape(b // slices, slices, *a.shape[1:]) for a in arrays]  # nothing is copied
    out = jax.lax.map(lambda j: f(*(a[:, j] for a in grouped)), jnp.arange(slices))  # [slices, b // slices, ...]
    return jnp.moveaxis(out, 0, 1).reshape(b, *out.shape[2:])


def multiscale_scores(model: nn.Module, variables: Any, batch: dict, devices: int = 1) -> jax.Array:
    """Table 4's fully-convolutional multi-scale testing: for each scale and for the image and its mirror, the class
    scores averaged over the score map's positions, then their softmax averaged over the ten. The larger scales are
    scored a slice of the batch at a time (`slices_for`; `devices`: the devices the batch is split over)."""

    def posteriors_of(canvas, valid):  # [2, n, classes]: the image's and its mirror's
        posteriors = []
        for image in (canvas, mirror_on_canvas(canvas, valid)):
            scores, positions = model.apply(variables, image, train=False, score_map=True, valid=valid)
            weights = positions[..., None].astype(jnp.float32)
            mean = jnp.sum(scores * weights, (1, 2)) / jnp.maximum(jnp.sum(weights, (1, 2)), 1)
            posteriors.append(jax.nn.softmax(mean))
        return jnp.stack(posteriors, axis=1)

    posteriors = []
    for side in MULTISCALE_SIDES:
        canvas, valid = batch[f"image_{side}"], batch[f"valid_{side}"]
        slices = slices_for(canvas.shape[0], canvas.shape[1], canvas.shape[2], devices)
        posteriors.append(_in_slices(posteriors_of, slices, canvas, valid))
    return jnp.mean(jnp.concatenate(posteriors, axis=1), axis=1)


def error_counts(
    model: nn.Module, protocol: str, variables: Any, batch: dict, devices: int = 1
) -> dict[str, jax.Array]:
    """{examples, top1_errors, top5_errors} of one batch of `protocol`, summed over its masked-in examples (`devices`:
    the devices the batch is split over)."""
    if protocol == "multiscale":
        scores = multiscale_scores(model, variables, batch, devices)
    else:
        scores = _view_scores(model, variables, batch)
    return _error_counts(scores, batch["label"], batch["mask"])
