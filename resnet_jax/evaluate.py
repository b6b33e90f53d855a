"""Evaluates a run's checkpoint, or published weights, under any test protocol of the paper, on one host or a pod.

    python -m resnet_jax.evaluate --workdir=DIR --protocol=10crop [--split=validation] [--step=N] [--distributed]
    python -m resnet_jax.evaluate --weights=resnet20:akamaster [--protocol=single] [--data_dir=DIR]

A run's evaluation is written to evaluations/<protocol>_<split>_<step>.json in its workdir and logged; published
weights (`resnet_jax.pretrained`: MODEL:TAG) are evaluated on their dataset with their own input normalisation, and
the result is logged beside the publisher's figure.
"""

import numpy as np
from absl import app, flags, logging

from resnet_jax.core import cli, multihost
from resnet_jax.core.errors import ConfigError
from resnet_jax.core.sharding import make_mesh
from resnet_jax.data import datasets
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.eval.evaluator import make_evaluator
from resnet_jax.eval.published import evaluate_weights, published_figure
from resnet_jax.eval.results import describe_summary, summarize
from resnet_jax.recipe.members import Members
from resnet_jax.run.load import load_run
from resnet_jax.run.rundir import RunDir

flags.DEFINE_string("workdir", None, "The run's workdir (or give --weights).")
flags.DEFINE_string(
    "weights", None, "Published weights MODEL:TAG to evaluate instead of a run (resnet_jax.pretrained)."
)
flags.DEFINE_enum(
    "protocol",
    None,
    datasets.all_protocols(),
    "Test protocol (default: the run's final protocol, else its config.eval.protocol; for --weights the one nearest "
    "the publisher's evaluation).",
)
flags.DEFINE_string("split", None, "Split to evaluate (default: the run's config.eval.split, or the test split).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_integer("batch_size", None, "Global evaluation batch size (default: the run's config.eval.batch_size).")
flags.DEFINE_string("data_dir", None, "tfds data dir of the prepared dataset (default: the run's, or $TFDS_DATA_DIR).")
cli.define_distributed_flags()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if (FLAGS.workdir is None) == (FLAGS.weights is None):
        raise app.UsageError("Give either --workdir (a run) or --weights (published weights, MODEL:TAG).")
    cli.initialize()
    if FLAGS.weights:
        evaluate_published()
    else:
        evaluate_run()


def evaluate_published() -> None:
    if FLAGS.step is not None:
        raise ConfigError("--step belongs to a run's checkpoints; published weights have none.")
    summary, entry = evaluate_weights(
        FLAGS.weights,
        make_mesh(),
        data_dir=FLAGS.data_dir,
        protocol=FLAGS.protocol,
        split=FLAGS.split,
        batch_size=FLAGS.batch_size or 256,
    )
    logging.info("%s; %s", describe_summary(summary, entry.name), published_figure(entry))


def evaluate_run() -> None:
    run_dir = RunDir(FLAGS.workdir)
    config = run_dir.read_config()  # before any work: a workdir that is not a run, a protocol or split it lacks
    if FLAGS.data_dir:
        config.data.data_dir = FLAGS.data_dir
    protocol = FLAGS.protocol or config.eval.final_protocol or config.eval.protocol
    facts = datasets.get(config.data.name)
    facts.check_protocol(protocol)
    split_names = facts.split_names(config.data.holdout_val)
    if FLAGS.split is not None and FLAGS.split not in split_names:
        raise ConfigError(f"--split={FLAGS.split}: {facts.name} in this run has the splits {', '.join(split_names)}.")
    dataset = PreparedDataset.open(config.data)
    mesh = make_mesh()
    _, model, state = load_run(run_dir, FLAGS.step, mesh)  # its config is the one read above
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
