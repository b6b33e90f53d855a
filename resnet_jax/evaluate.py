"""Evaluates a run's checkpoint under any test protocol of the paper.

    python -m resnet_jax.evaluate --workdir=DIR --protocol=10crop [--split=validation] [--step=N]

Writes eval_<protocol>_<split>_<step>.json into the workdir and prints the errors.
"""

import json

import jax
from absl import app, flags
from etils import epath

from resnet_jax import train
from resnet_jax.config import PROTOCOLS
from resnet_jax.sharding import check_divisible, make_mesh

flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
flags.DEFINE_enum("protocol", None, PROTOCOLS,
                  "Test protocol (default: the run's final protocol, else its config.eval.protocol).")
flags.DEFINE_string("split", None, "Split to evaluate (default: the run's config.eval.split).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_integer("batch_size", None, "Global evaluation batch size (default: the run's config.eval.batch_size).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    config, model, state = train.load_run(FLAGS.workdir, FLAGS.step)
    if FLAGS.batch_size:
        config.eval.batch_size = FLAGS.batch_size
    mesh = make_mesh()
    check_divisible(config.eval.batch_size, mesh, "--batch_size")
    protocol = FLAGS.protocol or config.eval.final_protocol or config.eval.protocol
    split = FLAGS.split or config.eval.split
    result = train.run_evaluation(config, model, state.variables(), mesh, protocol=protocol, split=split)
    step = int(state.step)
    if jax.process_index() == 0:
        (epath.Path(FLAGS.workdir) / f"eval_{protocol}_{split}_{step}.json").write_text(
            json.dumps({"step": step, "protocol": protocol, "split": split, **result}, indent=2))
        print(f"step {step} {split} {protocol}: top-1 error {100 * result['top1_error']:.2f}%, top-5 error "
              f"{100 * result['top5_error']:.2f}% ({result['examples']} examples)", flush=True)


if __name__ == "__main__":
    app.run(main)
