"""The whole train step against PyTorch: same initial weights, same batches, SGD with momentum and weight decay."""

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


def test_three_steps_match_pytorch_sgd():
    model = create_model("resnet20", num_classes=10)  # whole-batch BN, as PyTorch's BatchNorm2d
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4, momentum_form="common")  # PyTorch's form
    reference, state = ref.he_initialised_cifar_resnet("resnet20", 0, optimizer)
    step = make_train_step(model, optimizer, make_mesh())
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    rng = np.random.default_rng(0)
    initial = export_torch_state_dict("resnet20", state.variables())
    for i in range(3):
        images = rng.normal(size=(32, 32, 32, 3)).astype(np.float32)
        labels = rng.integers(0, 10, 32)
        state, metrics = step(
            state, {"image": jnp.asarray(images), "label": jnp.asarray(labels, jnp.int32)}, jnp.float32(0.1)
        )
        sgd.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            reference(torch.from_numpy(images.transpose(0, 3, 1, 2))), torch.from_numpy(labels)
        )
        loss.backward()
        sgd.step()
        # The same forward pass, then float32 summation order: gradients differ by about 1e-3 of their size.
        np.testing.assert_allclose(float(metrics["loss"]) / 32, loss.item(), rtol=1e-6 if i == 0 else 1e-3)
        if i == 0:  # the first update (learning rate, weight decay, BN gradients) agrees to 1% of its size
            ours = export_torch_state_dict("resnet20", state.variables())
            for name, theirs in reference.state_dict().items():
                if name.endswith("num_batches_tracked"):
                    continue
                update = np.abs(theirs.detach().numpy() - initial[name]).max()
                np.testing.assert_allclose(
                    ours[name], theirs.detach().numpy(), rtol=0, atol=0.01 * update + 1e-7, err_msg=name
                )
