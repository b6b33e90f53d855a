"""Input-pipeline stall: the train step fed by the real pipeline against the same step on in-memory batches.

    python benchmarks/end_to_end.py --model=resnet20 --data_dir=workdirs/tfds --steps=40

Both loops use the same jitted step and batch size, with metrics left on the device as in training. The gap between
the two images/s figures is time the step waited for data; it should be near zero.
"""

import json
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from configs import cifar10
from resnet_jax import models
from resnet_jax.core.machine import describe
from resnet_jax.core.sharding import make_mesh
from resnet_jax.data.feeds import DevicePrefetchIterator
from resnet_jax.data.pipeline import train_iterator
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.recipe.config import model_from_config
from resnet_jax.recipe.members import Members
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.state import create_train_state, member
from resnet_jax.train.step import make_train_step

flags.DEFINE_string("model", "resnet20", "A CIFAR model name.")
flags.DEFINE_string("data_dir", None, "tfds data directory holding the prepared cifar10.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("steps", 40, "Timed steps per loop (after 3 warm-up steps).")
flags.DEFINE_integer("worker_count", 2, "grain worker processes for the real pipeline.")
FLAGS = flags.FLAGS


def _time(step, state, batches, steps):
    lr = jnp.float32(0.1)
    for _ in range(3):
        state, metrics = step(state, next(batches), lr)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, next(batches), lr)
    jax.block_until_ready((state, metrics))
    return state, FLAGS.batch_size * steps / (time.perf_counter() - start)


def main(argv):
    del argv
    config = cifar10.get_config(FLAGS.model)
    config.data.data_dir, config.data.worker_count = FLAGS.data_dir, FLAGS.worker_count
    config.data.on_device = False  # this benchmark measures the grain pipeline
    model = model_from_config(config.model)
    mesh = make_mesh()
    optimizer = make_optimizer(**config.optimizer)
    state = member(create_train_state(model, optimizer, models.spec(FLAGS.model).input_shape, Members(), mesh))
    step = make_train_step(model, optimizer, mesh)

    dataset = PreparedDataset.open(config.data)
    real = DevicePrefetchIterator(
        train_iterator(dataset, config.data, global_batch_size=FLAGS.batch_size, seed=0), mesh
    )
    first = next(real)
    state, real_rate = _time(step, state, real, FLAGS.steps)

    def synthetic():
        while True:
            yield first  # already on the devices: no input work at all

    state, synthetic_rate = _time(step, state, synthetic(), FLAGS.steps)
    machine = describe()
    for name, rate in (("real_pipeline", real_rate), ("synthetic", synthetic_rate)):
        print(
            json.dumps(
                {"name": f"end_to_end/{FLAGS.model}/batch{FLAGS.batch_size}/{name}", "images_per_sec": rate, **machine}
            )
        )
    print(
        json.dumps(
            {
                "name": f"end_to_end/{FLAGS.model}/batch{FLAGS.batch_size}/stall",
                "gap_percent": 100 * (1 - real_rate / synthetic_rate),
                **machine,
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
