"""SGD with momentum and weight decay as in the paper, in Caffe's or the common form of momentum.

Caffe (the authors' framework) folds the learning rate into the velocity, v = m*v + lr*g, w -= v; the common form
(PyTorch, optax.sgd) scales after, v = m*v + g, w -= lr*v. They agree while the learning rate is constant and differ
for a few hundred steps after each drop: Caffe's velocity still carries the old, larger steps.

Weight decay is L2 added to the gradient (g + wd*w). 'all' decays every parameter, as the Caffe solver and
fb.resnet.torch do; 'kernels' spares BN scales/biases and the fc bias, a common modern choice.

The learning rate is a hyper-parameter injected into the optimiser state, so the host-side schedule (steps,
plateau, warm-up by training error) sets it each step without recompiling.
"""

from __future__ import annotations

from typing import Literal

import jax
import optax


def _decay_mask(params: optax.Params, which: Literal["all", "kernels"]) -> optax.Params:
    if which == "all":
        return jax.tree.map(lambda _: True, params)
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def _sgd(
    learning_rate: float,
    momentum: float,
    weight_decay: float,
    momentum_form: Literal["caffe", "common"],
    weight_decay_on: Literal["all", "kernels"],
) -> optax.GradientTransformation:
    decay = optax.add_decayed_weights(weight_decay, mask=lambda p: _decay_mask(p, weight_decay_on))
    if momentum_form == "caffe":
        return optax.chain(decay, optax.scale(-learning_rate), optax.trace(decay=momentum))
    return optax.chain(decay, optax.trace(decay=momentum), optax.scale(-learning_rate))


def make_optimizer(
    *,
    momentum: float,
    weight_decay: float,
    momentum_form: Literal["caffe", "common"] = "caffe",
    weight_decay_on: Literal["all", "kernels"] = "all",
) -> optax.GradientTransformation:
    """SGD whose `opt_state.hyperparams['learning_rate']` the training loop sets every step."""
    if momentum_form not in ("caffe", "common"):
        raise ValueError(f"optimizer.momentum_form must be 'caffe' or 'common', not {momentum_form!r}.")
    if weight_decay_on not in ("all", "kernels"):
        raise ValueError(f"optimizer.weight_decay_on must be 'all' or 'kernels', not {weight_decay_on!r}.")
    return optax.inject_hyperparams(_sgd, static_args=("momentum_form", "weight_decay_on"))(
        learning_rate=0.0,
        momentum=momentum,
        weight_decay=weight_decay,
        momentum_form=momentum_form,
        weight_decay_on=weight_decay_on,
    )
