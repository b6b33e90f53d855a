"""Published weights in a `flax.nnx` program: load, evaluate, and take SGD steps with optax.

    RESNET_JAX_WEIGHTS_MIRROR=../shared/data/weights \
        python examples/nnx_transfer.py --data_dir=~/tensorflow_datasets [--weights=resnet20:akamaster] [--steps=5]

Our nets are flax.linen modules; `resnet_jax.interop.nnx_bridge.to_nnx` wraps one in flax's bridge
(`nnx.bridge.ToNNX`) holding the weights as `nnx.Param` and `nnx.BatchStat`, so an nnx program trains it with
`nnx.Optimizer` and `nnx.value_and_grad` like any nnx module. This script fits one batch of the training split a few
times (the loss must fall: the step works) and checks the nnx module against the linen one it came from. It takes a
CIFAR-sized entry (32x32 images as they are); an ImageNet entry would need its crop.
"""

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx
from PIL import Image

from resnet_jax import pretrained
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.interop.nnx_bridge import to_linen_variables, to_nnx

flags.DEFINE_string("weights", "resnet20:akamaster", "Published weights MODEL:TAG (CIFAR-sized).")
flags.DEFINE_string("data_dir", None, "tfds data dir of the prepared dataset the weights were trained on.")
flags.DEFINE_integer("steps", 5, "SGD steps on one batch.")
flags.DEFINE_integer("batch_size", 64, "Images in the batch.")
flags.DEFINE_float("learning_rate", 0.01, "SGD learning rate (momentum 0.9).")
FLAGS = flags.FLAGS


def batch(entry: pretrained.Weights, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` images of `split`, normalised as the weights were trained, and their labels."""
    source = PreparedDataset(entry.dataset, FLAGS.data_dir).source(split)
    records = [source[i] for i in range(n)]
    images = np.stack([np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB")) for r in records])
    images = (images.astype(np.float32) - np.array(entry.mean, np.float32)) / np.array(entry.std, np.float32)
    return images, np.array([r["label"] for r in records])


@nnx.jit
def train_step(net: nnx.Module, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array) -> jax.Array:
    def loss_fn(net):
        logits = net(images, train=True, mutable=["batch_stats"])  # BN statistics are updated in place
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(net)  # gradients of the nnx.Param leaves only
    optimizer.update(net, grads)
    return loss


def main(argv):
    del argv
    # Set-up: the published weights, as an nnx module.
    entry = pretrained.parse(FLAGS.weights)
    model, variables, entry = pretrained.load(entry.model, entry.tag)
    net = to_nnx(model, variables)

    # Inference: the nnx module computes what the linen one does.
    images, labels = batch(entry, "test", FLAGS.batch_size)
    logits = net(images, train=False)
    assert np.allclose(logits, model.apply(variables, images), atol=1e-5)
    accuracy = float(np.mean(np.argmax(logits, -1) == labels))
    logging.info("%s on %d test images: accuracy %.1f%%", entry.name, len(labels), 100 * accuracy)

    # Training: SGD with momentum on one batch of the training split.
    optimizer = nnx.Optimizer(net, optax.sgd(FLAGS.learning_rate, momentum=0.9), wrt=nnx.Param)
    images, labels = batch(entry, "train", FLAGS.batch_size)
    losses = [float(train_step(net, optimizer, jnp.asarray(images), jnp.asarray(labels))) for _ in range(FLAGS.steps)]
    logging.info("losses over %d steps on one batch: %s", FLAGS.steps, " ".join(f"{x:.4f}" for x in losses))

    # The end: the trained weights back as linen variables (for our checkpoints and convert.py).
    trained = to_linen_variables(net)
    assert np.allclose(net(images, train=False), model.apply(trained, images), atol=1e-5)
    logging.info("nnx and linen agree after training; loss %.4f -> %.4f", losses[0], losses[-1])


if __name__ == "__main__":
    flags.mark_flag_as_required("data_dir")
    app.run(main)
