"""Trains and evaluates one run of the paper (or several runs of one net in one program).

    python -m resnet_jax.main --config=configs/imagenet_r50.py --workdir=gs://BUCKET/r50
    python -m resnet_jax.main --config=configs/cifar10.py:resnet20,quick --config.prepare_from=../shared/data/cifar10 \
        --workdir=/tmp/r20

Rerunning the same command on the same workdir resumes it. Any config key can be overridden (--config.batch_size=512);
a resumed run refuses a change that alters what it computes unless --accept_changes names the key, and records every
change it accepts (resumes.jsonl).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax.core import cli, multihost
from resnet_jax.eval.results import describe_summary
from resnet_jax.train.loop import train_and_evaluate

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), optionally with :ARG.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (local or gs://) for checkpoints, logs and results.", required=True)
flags.DEFINE_list(
    "accept_changes",
    [],
    "Config keys a resumed run may change although they change what it computes (e.g. schedule.boundaries for a "
    "longer schedule); recorded in the run's resumes.jsonl.",
)
cli.define_distributed_flags()
FLAGS = flags.FLAGS


def main(argv: list[str], *, input_hook=None) -> None:
    """The command; `input_hook` is for the recovery tests (`Trainer`'s)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = cli.config_flag()
    cli.initialize()
    logging.info("Workdir %s.", FLAGS.workdir)
    result = train_and_evaluate(config, FLAGS.workdir, accept_changes=FLAGS.accept_changes, input_hook=input_hook)
    if result and multihost.is_main():  # no result: preempted, the checkpoint is saved
        logging.info("%s", describe_summary(result, config.model.name))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    cli.run(main)
