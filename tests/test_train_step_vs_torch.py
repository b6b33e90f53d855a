"""The whole train step against PyTorch: same initial weights, same batches, SGD with momentum and weight decay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.convert import export_torch_state_dict
from resnet_jax.core.sharding import make_mesh
from resnet_jax.models import create_model
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.train.step import make_train_step

torch = pytest.importorskip("torch")
from experiments import torch_reference as ref  # noqa: E402


def _batch(rng, size, side):
    return rng.normal(size=(size, side, side, 3)).astype(np.float32), rng.integers(0, 10, size)


def _torch_step(reference, sgd, images, labels):
    sgd.zero_grad()
    loss = torch.nn.functional.cross_entropy(
        reference(torch.from_numpy(images.transpose(0, 3, 1, 2))), torch.from_numpy(labels)
    )
    loss.backward()
    sgd.step()
    return loss.item()


def test_three_steps_match_pytorch_sgd():
    """CIFAR ResNet-20 with the CPU's default convolutions (oneDNN's where it loads)."""
    model = create_model("resnet20", num_classes=10)  # whole-batch BN, as PyTorch's BatchNorm2d
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4, momentum_form="common")  # PyTorch's form
    reference, state = ref.he_initialised_cifar_resnet("resnet20", 0, optimizer)
    step = make_train_step(model, optimizer, make_mesh())
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    rng = np.random.default_rng(0)
    initial = export_torch_state_dict("resnet20", state.variables())
    for i in range(3):
        images, labels = _batch(rng, 32, 32)
        state, metrics = step(
            state, {"image": jnp.asarray(images), "label": jnp.asarray(labels, jnp.int32)}, jnp.float32(0.1)
        )
        loss = _torch_step(reference, sgd, images, labels)
        # The same forward pass, then float32 summation order: gradients differ by about 1e-3 of their size.
        np.testing.assert_allclose(float(metrics["loss"]) / 32, loss, rtol=1e-6 if i == 0 else 1e-3)
        ours = export_torch_state_dict("resnet20", state.variables())
        theirs = {k: v.detach().numpy() for k, v in reference.state_dict().items() if "num_batches" not in k}
        if i == 0:  # the first update (learning rate, weight decay, BN gradients) agrees to 1% of its size
            for name in theirs:
                update = np.abs(theirs[name] - initial[name]).max()
                np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=0.01 * update + 1e-7, err_msg=name)
        else:  # momentum acts from the second update on (a wrong momentum is invisible in the first): every
            # tensor's distance to PyTorch's against the size of its updates so far
            d = {k: np.linalg.norm(ours[k] - theirs[k]) / np.linalg.norm(theirs[k] - initial[k]) for k in theirs}
            assert np.median(list(d.values())) < 0.02 and max(d.values()) < 0.15, (i, d)  # measured: 0.006, 0.07


def test_a_resnet50_step_matches_pytorch_sgd_as_closely_as_xla_s_convolutions_do():
    """ResNet-50 v1.5 (torchvision's), one step on 4 images of 64x64, He-initialised. Such a deep untrained net
    amplifies float32 rounding: with XLA's convolutions or oneDNN's, each weight tensor's update is PyTorch's within
    about 1% of its norm (median; 2% at most), against 1e-3 for ResNet-20, and an input changed by one part in a
    million moves it as much. The BN running variances included: with `bn_unbiased_var` (the paper configs'),
    ours are updated with the unbiased variance as PyTorch's (and Caffe's) are, which at 2x2 maps of 4 images is
    n / (n - 1) = 1.07 times the biased one."""
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4, momentum_form="common")
    rng = np.random.default_rng(0)
    images, labels = _batch(rng, 4, 64)
    distances = {}
    for conv_impl in ("auto", "xla"):
        torch.manual_seed(0)
        net = ref.TorchvisionResNet(ref.TvBottleneck, [3, 4, 6, 3], num_classes=10)
        reference, state = ref.he_initialised("resnet50", net, optimizer, stride_on_3x3=True)
        model = create_model("resnet50", num_classes=10, stride_on_3x3=True, conv_impl=conv_impl, bn_unbiased_var=True)
        initial = export_torch_state_dict("resnet50", state.variables())
        state, metrics = make_train_step(model, optimizer, make_mesh())(
            state, {"image": jnp.asarray(images), "label": jnp.asarray(labels, jnp.int32)}, jnp.float32(0.1)
        )
        sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        np.testing.assert_allclose(float(metrics["loss"]) / 4, _torch_step(reference, sgd, images, labels), rtol=1e-4)
        ours = export_torch_state_dict("resnet50", state.variables())
        distances[conv_impl] = [
            np.linalg.norm(ours[key] - theirs.numpy()) / np.linalg.norm(theirs.numpy() - initial[key])
            for key, theirs in reference.state_dict().items()
            if not key.endswith("num_batches_tracked")
        ]
    for conv_impl, d in distances.items():
        assert np.median(d) < 0.02 and max(d) < 0.05, (conv_impl, np.median(d), max(d))
    assert np.median(distances["auto"]) < 1.5 * np.median(distances["xla"])


@pytest.mark.parametrize("group_size", [None, 2])
def test_the_unbiased_moving_variance_is_pytorch_s_and_the_biased_one_is_flax_s(group_size):
    """One training step of BatchNorm on 4 maps of 3x3 (n = 36 values per channel, or 18 per group of 2 images,
    where PyTorch's per-GPU BN runs one BatchNorm2d per group): the moving averages against PyTorch's."""
    import flax.linen as nn

    from resnet_jax.models.batch_norm import GroupedBatchNorm

    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 3, 3, 5)).astype(np.float32)
    groups = [x] if group_size is None else [x[:2], x[2:]]
    expected = []
    for group in groups:  # each "GPU" its own BatchNorm2d; ours averages the groups' statistics
        bn = torch.nn.BatchNorm2d(5, momentum=0.1)
        bn.train()(torch.from_numpy(group.transpose(0, 3, 1, 2)))
        expected.append((bn.running_mean.numpy(), bn.running_var.numpy()))
    mean, var = (np.mean([e[i] for e in expected], axis=0) for i in (0, 1))
    for unbiased in (True, False):
        norm = GroupedBatchNorm(use_running_average=False, group_size=group_size, unbiased_running_var=unbiased)
        variables = norm.init(jax.random.key(0), x)
        _, updated = norm.apply(variables, x, mutable=["batch_stats"])
        stats = updated["batch_stats"]
        np.testing.assert_allclose(stats["mean"], mean, rtol=1e-6)
        if unbiased:
            np.testing.assert_allclose(stats["var"], var, rtol=1e-6)
        else:  # Flax's: the biased variance
            n = 36 if group_size is None else 18
            np.testing.assert_allclose(0.9 + (stats["var"] - 0.9) * n / (n - 1), var, rtol=1e-6)
            flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
            if group_size is None:
                _, theirs = flax_bn.apply(flax_bn.init(jax.random.key(0), x), x, mutable=["batch_stats"])
                np.testing.assert_allclose(stats["var"], theirs["batch_stats"]["var"], rtol=1e-6)
