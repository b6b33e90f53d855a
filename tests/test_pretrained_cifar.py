"""The public pretrained CIFAR-10 ResNets, converted, on the real, lossless CIFAR-10 test images.

The expected accuracies are the independent NumPy evaluation recorded in ../shared/data/README.md (section 3), on
the lossless originals of the first 1017 test images. (ResNet-20 on the whole JPEG test set, 81.03%, is checked
through `resnet_jax.pretrained` and `python -m resnet_jax.evaluate --weights` in test_pretrained.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.convert import load_torch_state_dict, read_state_dict
from resnet_jax.models import create_model
from tests.support.paths import SHARED_DATA, requires_shared_data

pytestmark = requires_shared_data

# Lossless test images 0..1016, percent (the JPEG copy of the 10,000: 81.03, 82.56, 82.67, 83.20).
EXPECTED = {20: 91.64, 32: 92.82, 44: 93.41, 56: 92.72}
# The normalisation these weights were trained with (not the paper's per-pixel mean).
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def lossless():
    z = np.load(SHARED_DATA / "cifar10" / "cifar10_original_labels_and_lossless_prefix.npz")
    images = z["test_batch_data_prefix"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert len(images) == 1017
    return images, z["test_batch_labels"][: len(images)]


def _accuracy(model, variables, images, labels):
    apply = jax.jit(lambda x: jnp.argmax(model.apply(variables, x), -1))
    x = (images.astype(np.float32) / 255 - MEAN) / STD
    predictions = np.concatenate([apply(x[i : i + 500]) for i in range(0, len(x), 500)])
    return 100 * float(np.mean(predictions == labels))


@pytest.mark.parametrize("depth", sorted(EXPECTED))
def test_pretrained_accuracy_matches_independent_evaluation(depth, lossless):
    path = next((SHARED_DATA / "weights").glob(f"resnet{depth}-*.npz"))
    name = f"resnet{depth}"
    variables = load_torch_state_dict(name, read_state_dict(path))
    model = create_model(name, num_classes=10)
    assert abs(_accuracy(model, variables, *lossless) - EXPECTED[depth]) <= 0.1
