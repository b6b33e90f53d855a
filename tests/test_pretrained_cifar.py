"""The public pretrained CIFAR-10 ResNets, converted, on the real CIFAR-10 test images.

The expected accuracies are the independent NumPy evaluation recorded in ../shared/data/README.md (section 3).
"""

import csv
import io
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from resnet_jax.convert import load_torch_state_dict, read_state_dict
from resnet_jax.models import create_model
from tests.support.paths import SHARED_DATA, requires_shared_data

pytestmark = requires_shared_data

# (lossless test images 0..1016, JPEG copy of the full 10,000 test set), percent
EXPECTED = {20: (91.64, 81.03), 32: (92.82, 82.56), 44: (93.41, 82.67), 56: (92.72, 83.20)}
# The normalisation these weights were trained with (not the paper's per-pixel mean).
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def test_sets():
    cifar = SHARED_DATA / "cifar10"
    with open(cifar / "cifar10_jpeg_index.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]  # in test_batch order
    wanted = {"cifar-10-images-jpg/" + r["jpeg_path"] for r in rows}
    images = {}
    with tarfile.open(cifar / "cifar-10-images-jpg.tar.gz") as tar:
        for member in tar:
            if member.name in wanted:
                images[member.name] = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
    jpeg = np.stack([images["cifar-10-images-jpg/" + r["jpeg_path"]] for r in rows])
    jpeg_labels = np.array([int(r["label"]) for r in rows])
    z = np.load(cifar / "cifar10_original_labels_and_lossless_prefix.npz")
    lossless = z["test_batch_data_prefix"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    lossless_labels = z["test_batch_labels"][: len(lossless)]
    assert len(jpeg) == 10_000 and len(lossless) == 1017
    assert np.array_equal(jpeg_labels[:1017], lossless_labels)
    return (lossless, lossless_labels), (jpeg, jpeg_labels)


def _accuracy(model, variables, images, labels):
    apply = jax.jit(lambda x: jnp.argmax(model.apply(variables, x), -1))
    x = (images.astype(np.float32) / 255 - MEAN) / STD
    predictions = np.concatenate([apply(x[i : i + 500]) for i in range(0, len(x), 500)])
    return 100 * float(np.mean(predictions == labels))


# The deepest net only: ResNet-20's JPEG figure is also checked through `pretrained.load` and the evaluate command
# (test_pretrained.py), and every file reads to its .npz twin (test_torch_files.py) and converts by the same code.
@pytest.mark.parametrize("depth", [56])
def test_pretrained_accuracy_matches_independent_evaluation(depth, test_sets):
    path = next((SHARED_DATA / "weights").glob(f"resnet{depth}-*.npz"))
    name = f"resnet{depth}"
    variables = load_torch_state_dict(name, read_state_dict(path))
    model = create_model(name, num_classes=10)
    for (images, labels), expected in zip(test_sets, EXPECTED[depth], strict=True):
        assert abs(_accuracy(model, variables, images, labels) - expected) <= 0.1
