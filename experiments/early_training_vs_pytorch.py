"""The first training steps of a CIFAR net, ours against PyTorch from the same weights on the same batches.

    python -m experiments.early_training_vs_pytorch --model=resnet56 --steps=60 --data_dir=workdirs/tfds

Both start from one He-initialised PyTorch net (converted with resnet_jax.convert), read the same real CIFAR-10
batches from our pipeline and take SGD steps with lr 0.1, momentum 0.9 and weight decay 1e-4 in PyTorch's form, with
whole-batch BatchNorm. It tells whether a behaviour of early training (such as ResNet-56's divergence at lr 0.1 in the
quick depth study) is ours or the recipe's. Needs torch (`pip install -e ".[test]"`).
"""

import jax.numpy as jnp
import numpy as np
import torch
from absl import flags, logging

from configs import cifar10
from experiments.torch_reference import he_initialised_cifar_resnet
from resnet_jax.core import cli
from resnet_jax.core.sharding import make_mesh
from resnet_jax.data.pipeline import train_iterator
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.models import create_model
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.train.step import make_train_step

flags.DEFINE_string("model", "resnet56", "A residual CIFAR net (resnet20..1202).")
flags.DEFINE_integer("steps", 60, "Training steps.")
flags.DEFINE_integer("seed", 0, "torch seed of the shared initialisation.")
flags.DEFINE_float("learning_rate", 0.1, "Constant learning rate.")
flags.DEFINE_string("data_dir", None, "tfds data directory holding the prepared cifar10.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model = create_model(FLAGS.model, num_classes=10)
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4, momentum_form="common")
    reference, state = he_initialised_cifar_resnet(FLAGS.model, FLAGS.seed, optimizer)
    step = make_train_step(model, optimizer, make_mesh())
    sgd = torch.optim.SGD(reference.parameters(), lr=FLAGS.learning_rate, momentum=0.9, weight_decay=1e-4)

    config = cifar10.get_config(FLAGS.model)
    config.data.data_dir, config.data.worker_count, config.data.on_device = FLAGS.data_dir, 0, False
    batches = train_iterator(PreparedDataset.open(config.data), config.data, global_batch_size=128, seed=0)
    for i in range(1, FLAGS.steps + 1):
        batch = next(batches)
        state, metrics = step(
            state,
            {"image": jnp.asarray(batch["image"]), "label": jnp.asarray(batch["label"])},
            jnp.float32(FLAGS.learning_rate),
        )
        sgd.zero_grad()
        logits = reference(torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["label"].astype(np.int64)))
        loss.backward()
        sgd.step()
        if i % 5 == 1 or i == FLAGS.steps:
            ours = float(metrics["loss"]) / 128
            logging.info("step %4d  loss: ours %7.3f  PyTorch %7.3f", i, ours, loss.item())


if __name__ == "__main__":
    cli.run(main)
