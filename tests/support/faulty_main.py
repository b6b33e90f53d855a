"""`python -m resnet_jax.main` with a fault injected into one process's training input pipeline, for the multi-host
recovery tests.

    python -m tests.support.faulty_main --fault=transient --fault_process=1 --fault_batch=3 <resnet_jax.main flags>

'transient': the pipeline raises OSError once, at its fault_batch-th batch; 'permanent': it raises OSError for every
batch from there on (every rebuild fails too).
"""

import errno

from absl import flags

from resnet_jax import main
from resnet_jax.core import cli
from tests.support.faults import FlakyInput

flags.DEFINE_enum("fault", "transient", ["transient", "permanent"], "The fault to inject.")
flags.DEFINE_integer("fault_process", 1, "The process whose pipeline fails.")
flags.DEFINE_integer("fault_batch", 3, "The batch (counting from 1) at which it fails.")
FLAGS = flags.FLAGS


def faulty_main(argv: list[str]) -> None:
    hook = FlakyInput(
        FLAGS.fault_batch,
        OSError(errno.EBADF, "Bad file descriptor (injected)"),
        permanent=FLAGS.fault == "permanent",
        process=FLAGS.fault_process,
    )
    main.main(argv, input_hook=hook)


if __name__ == "__main__":
    cli.run(faulty_main)
