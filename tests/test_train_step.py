"""The train step's own bookkeeping, on a tiny net: its metrics, static loss scaling, and the dispatch of several
steps per call (which loop runs them, and that both give the steps one at a time)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.core.sharding import make_mesh
from resnet_jax.data.feeds import DeviceFeed
from resnet_jax.data.on_device import TrainData
from resnet_jax.models import BasicBlock, ResNet
from resnet_jax.recipe.members import Members
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.state import create_train_state, member
from resnet_jax.train.step import make_dispatch, make_train_step


def _model(conv_impl: str = "auto") -> ResNet:
    return ResNet(
        stage_sizes=(1, 1), block_cls=BasicBlock, num_classes=10, widths=(8, 8), stem="cifar", shortcut="A",
        conv_impl=conv_impl,
    )  # fmt: skip


def _batch(seed: int, size: int = 16):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(size, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, size), jnp.int32),
    }


def test_one_step_counts_its_step_loss_errors_and_examples():
    model, optimizer, mesh = _model(), make_optimizer(momentum=0.9, weight_decay=1e-4), make_mesh()
    state = member(create_train_state(model, optimizer, (32, 32, 3), Members(), mesh))
    batch = _batch(0)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits, _ = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    logits, labels = np.asarray(logits, np.float64), np.asarray(batch["label"])
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    step = int(state.step)
    new, metrics = make_train_step(model, optimizer, mesh)(state, batch, jnp.float32(0.1))
    assert int(new.step) == step + 1
    assert int(metrics["examples"]) == 16
    assert int(metrics["errors"]) == int((logits.argmax(1) != labels).sum())
    np.testing.assert_allclose(float(metrics["loss"]), -log_softmax[np.arange(16), labels].sum(), rtol=1e-5)


def test_static_loss_scaling_leaves_the_float32_update_as_it_is():
    """The loss times 512 before the backward pass, the gradients divided by 512 after it: in float32 the same
    update as without (within rounding), where a scale left on the gradients, or applied twice, moves it 512-fold."""
    model, optimizer, mesh = _model(), make_optimizer(momentum=0.9, weight_decay=1e-4), make_mesh()
    state = member(create_train_state(model, optimizer, (32, 32, 3), Members(), mesh))
    batch = _batch(1)
    params = {}
    for scale in (1.0, 512.0):
        copy = jax.tree.map(jnp.copy, state)  # the step donates its state
        new, metrics = make_train_step(model, optimizer, mesh, loss_scale=scale)(copy, batch, jnp.float32(0.1))
        params[scale] = jax.tree.leaves(new.params)
        assert 2.0 < float(metrics["loss"]) / 16 < 3.0  # the loss reported is the unscaled one (chance: ln 10)
    initial = jax.tree.leaves(state.params)
    for a, b, p0 in zip(params[1.0], params[512.0], initial, strict=True):
        update = float(jnp.max(jnp.abs(a - p0)))
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-3 * update + 1e-7)


@pytest.fixture(scope="module")
def feed_data():
    return TrainData.random(48, seed=2, mesh=make_mesh())


def test_the_dispatch_loops_take_the_steps_one_call_at_a_time_takes(feed_data):
    """'scan' (one `lax.scan`) and 'host' (calls of one jitted step) give the same state and metric sums over 3 steps
    as 3 dispatches of one step each; 'auto' scans more than one step where the convolutions scan well."""
    model, optimizer, mesh, members = _model(), make_optimizer(momentum=0.9, weight_decay=1e-4), make_mesh(), Members()
    feed = DeviceFeed(feed_data, 16, mesh, members.seeds)
    lrs = np.asarray([[0.1, 0.05, 0.02]], np.float32)

    def run(loop, k):
        state = create_train_state(model, optimizer, (32, 32, 3), members, mesh)
        dispatch = make_dispatch(model, optimizer, mesh, feed, k, members, loop=loop)
        sums = []
        for d in range(3 // k):
            state, s = dispatch(state, feed.data, feed.inputs(d * k), members.seeds, lrs[:, d * k : (d + 1) * k])
            sums.append({key: np.asarray(v) for key, v in s.items()})
        total = {key: sum(s[key] for s in sums) for key in sums[0]}
        return jax.tree.leaves(member(state)), total, dispatch

    one_at_a_time, expected, _ = run("host", 1)
    assert expected["examples"].item() == 48 and expected["errors"].item() > 0  # one member: one value each
    for loop in ("scan", "host"):
        leaves, total, _ = run(loop, 3)
        for key in expected:
            np.testing.assert_allclose(total[key], expected[key], rtol=1e-5, err_msg=f"{loop}: {key}")
        for a, b in zip(leaves, one_at_a_time, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=loop)

    def scans(loop, steps, conv_impl="auto"):
        dispatch = make_dispatch(_model(conv_impl), optimizer, mesh, feed, steps, members, loop=loop)
        return hasattr(dispatch, "lower")  # a jitted scan, not the host's loop of calls

    assert scans("scan", 1) and scans("scan", 3) and not scans("host", 3)
    assert scans("auto", 2) and not scans("auto", 1)  # with oneDNN's convolutions, which scan well
    assert not scans("auto", 3, conv_impl="xla")  # XLA:CPU's convolution gradients crawl in a loop body
