"""The ImageNet recipe of Section 3.4, shared by every ImageNet config (this file is not a config itself).

Recipe: batch 256 in BN groups of 32 (the authors' 8 GPUs), SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10
when the error plateaus, up to 60e4 iterations; shorter side resized to a random size in [256, 480], random 224 crop
and flip, per-pixel mean, PCA colour noise. Evaluation during training uses the 1-crop view on the validation set;
the final evaluation uses the table's protocol (10 crops for Tables 2-3, multi-scale for Table 4); any protocol can be
rerun on a checkpoint with resnet_jax.evaluate. The numbers each table should give are in docs/paper.md.

Where the paper is silent, these choices:
- "When the error plateaus": the plateau is watched on the training error, averaged over each epoch (the interval
  between evaluations), not on the validation error. The loop measures it on all 1.28M training images at no cost, it
  removes no image from training (a held-out slice of the training set would), and the validation set stays unseen
  by every decision until the reported evaluation. `schedule.plateau_on="validation_error"` watches the 1-crop
  validation error instead (the set the results are reported on); `schedule.kind="steps"` with
  `schedule.boundaries` gives fixed drops (e.g. at epochs 30 and 60, STEPS_PER_EPOCH apart).
- BN statistics: recomputed after training as a plain average over 51,200 training images (200 batches of 256, each
  batch's own statistics), as the authors' released models were ("on a sufficiently large training batch"; they give
  no number, and a few ten thousand images make the estimate stable). `bn_statistics="moving_average"` keeps the
  moving averages; result.json says which were used. Evaluations during training use the moving averages.
"""

from typing import NamedTuple

from resnet_jax.data import datasets
from resnet_jax.recipe.config import base_config

STEPS_PER_EPOCH = datasets.get("imagenet2012").train_examples // 256


class Row(NamedTuple):
    """One row of a paper table: the net and its shortcut option."""

    model: str
    shortcut: str


def recipe(model: str, shortcut: str = "B", final_protocol: str = "10crop"):
    """The paper's ImageNet config for `model` with shortcut option `shortcut`."""
    c = base_config("imagenet2012", model)
    c.batch_size = 256
    c.num_steps = 600_000
    c.model.bn_group_size = 32
    c.model.shortcut = shortcut
    c.schedule.kind = "plateau"
    c.schedule.base_lr = 0.1
    c.schedule.plateau_on = "train_error"
    c.schedule.plateau_patience = 3
    c.eval.split = "validation"
    c.eval.protocol = "1crop"
    c.eval.final_protocol = final_protocol
    c.eval.batch_size = 256
    c.eval.every_steps = STEPS_PER_EPOCH
    c.checkpoint_every_steps = STEPS_PER_EPOCH // 4
    c.bn_statistics = "recomputed"
    c.bn_recompute_examples = 200 * 256
    return c


def table_config(rows: dict[str, Row], arg: str, final_protocol: str):
    """The config of one row of a paper table."""
    if arg not in rows:
        raise ValueError(f"Unknown row {arg!r}; rows: {', '.join(rows)}.")
    model, shortcut = rows[arg]
    return recipe(model, shortcut, final_protocol)
