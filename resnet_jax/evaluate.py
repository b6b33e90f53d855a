"""Evaluates a run's checkpoint under any test protocol of the paper, on one host or all hosts of a pod.

    python -m resnet_jax.evaluate --workdir=DIR --protocol=10crop [--split=validation] [--step=N] [--distributed]

Writes evaluations/<protocol>_<split>_<step>.json into the workdir and logs the errors.
"""

import numpy as np
from absl import app, flags, logging

from resnet_jax.core import cli, multihost
from resnet_jax.core.errors import ConfigError
from resnet_jax.core.sharding import make_mesh
from resnet_jax.data import datasets
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.eval.evaluator import make_evaluator
from resnet_jax.eval.results import describe_summary, summarize
from resnet_jax.recipe.members import Members
from resnet_jax.run.load import load_run
from resnet_jax.run.rundir import RunDir

flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
flags.DEFINE_enum(
    "protocol",
    None,
    datasets.all_protocols(),
    "Test protocol (default: the run's final protocol, else its config.eval.protocol).",
)
flags.DEFINE_string("split", None, "Split to evaluate (default: the run's config.eval.split).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_integer("batch_size", None, "Global evaluation batch size (default: the run's config.eval.batch_size).")
cli.define_distributed_flags()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.initialize()
    run_dir = RunDir(FLAGS.workdir)
    config = run_dir.read_config()  # before any work: a workdir that is not a run, a protocol or split it lacks
    protocol = FLAGS.protocol or config.eval.final_protocol or config.eval.protocol
    facts = datasets.get(config.data.name)
    facts.check_protocol(protocol)
    split_names = facts.split_names(config.data.holdout_val)
    if FLAGS.split is not None and FLAGS.split not in split_names:
        raise ConfigError(f"--split={FLAGS.split}: {facts.name} in this run has the splits {', '.join(split_names)}.")
    dataset = PreparedDataset.open(config.data)
    mesh = make_mesh()
    config, model, state = load_run(run_dir, FLAGS.step, mesh)
    evaluator = make_evaluator(
        config,
        model,
        dataset,
        mesh,
        Members.from_config(config),
        protocol=protocol,
        split=FLAGS.split,
        batch_size=FLAGS.batch_size,
    )
    summary = summarize(evaluator(state.variables()))
    step = int(np.asarray(state.step).reshape(-1)[0])
    if multihost.is_main():
        path = run_dir.write_evaluation(step, summary)
        logging.info("step %d %s (%s)", step, describe_summary(summary, config.model.name), path)


if __name__ == "__main__":
    cli.run(main)
