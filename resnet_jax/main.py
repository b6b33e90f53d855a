"""Trains and evaluates one run of the paper.

    python -m resnet_jax.main --config=configs/imagenet_r50.py --workdir=gs://BUCKET/r50
    python -m resnet_jax.main --config=configs/cifar10.py:resnet20,quick --config.prepare_from=../shared/data/cifar10 \
        --workdir=/tmp/r20

Rerunning the same command on the same workdir resumes it. Any config key can be overridden (--config.batch_size=512).
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import train

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), optionally with :ARG.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (local or gs://) for checkpoints, logs and results.", required=True)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize(): automatic on Cloud TPU and Slurm; "
                  "elsewhere also give --coordinator_address, --num_processes and --process_id.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for jax.distributed on other clusters.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for jax.distributed on other clusters.")
flags.DEFINE_integer("process_id", None, "This process's index, for jax.distributed on other clusters.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # progress goes to stdout; library INFO logs (orbax) only on request
    if FLAGS.distributed or FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if jax.process_index() == 0:
        print(f"JAX: {jax.process_count()} process(es), {jax.device_count()} {jax.devices()[0].platform} device(s); "
              f"workdir {FLAGS.workdir}", flush=True)
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if result and jax.process_index() == 0:  # no result: preempted, the checkpoint is saved
        print(f"{FLAGS.config.model.name} {FLAGS.config.eval.split} ({FLAGS.config.eval.protocol}): "
              f"top-1 error {100 * result['top1_error']:.2f}% (accuracy {100 * (1 - result['top1_error']):.2f}%), "
              f"top-5 error {100 * result['top5_error']:.2f}%, {result['examples']} examples", flush=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
