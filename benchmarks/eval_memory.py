"""The memory an ImageNet evaluation needs, per protocol: its batches in host memory and XLA's program.

    python -m benchmarks.eval_memory [--nets=resnet18,resnet50] [--batch_size=32]

For each test protocol: the host bytes of one example of its batches (`pipeline.example_bytes`: the views, the
multi-scale canvases of the widest aspect bucket, label, mask, index), and for each net XLA's own account of the
compiled evaluation step at `--batch_size` (`compiled.memory_analysis()`: its arguments, the parameters and one
batch, and its scratch memory), per example. Nothing is run; one compilation per net and protocol. One JSON line
per figure, then the machine.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from resnet_jax.core.machine import describe
from resnet_jax.data import pipeline, protocols
from resnet_jax.eval.scores import error_counts
from resnet_jax.models import create_model

flags.DEFINE_list("nets", ["resnet18", "resnet50"], "ImageNet nets.")
flags.DEFINE_integer("batch_size", 32, "Evaluation batch of the compiled step.")
FLAGS = flags.FLAGS
PROTOCOLS = ("1crop", "10crop", "multiscale")
MIB = 2**20


def _view(protocol: str) -> protocols._View:
    return protocols.VIEWS[protocol](np.zeros((224, 224, 3), np.float32))  # shapes only: any mean will do


def main(argv: list[str]) -> None:
    del argv
    b = FLAGS.batch_size
    for protocol in PROTOCOLS:
        per_example = pipeline.example_bytes(_view(protocol), protocol)
        print(json.dumps({"protocol": protocol, "host_mib_per_example": round(per_example / MIB, 2)}), flush=True)
    for name in FLAGS.nets:
        model = create_model(name, num_classes=1000)
        variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
        parameters = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(variables))
        for protocol in PROTOCOLS:
            example = pipeline.largest_example(_view(protocol), protocol)
            batch = {k: jax.ShapeDtypeStruct((b, *a.shape), a.dtype) for k, a in example.items()}
            batch.update(label=jax.ShapeDtypeStruct((b,), jnp.int32), mask=jax.ShapeDtypeStruct((b,), jnp.bool_))
            step = jax.jit(lambda v, batch, m=model, p=protocol: error_counts(m, p, v, batch))
            memory = step.lower(variables, batch).compile().memory_analysis()
            figures = {
                "net": name,
                "protocol": protocol,
                "batch": b,
                "parameters_mib": round(parameters / MIB, 1),
                "program_arguments_mib": round(memory.argument_size_in_bytes / MIB, 1),
                "program_scratch_mib": round(memory.temp_size_in_bytes / MIB, 1),
                "program_scratch_mib_per_example": round(memory.temp_size_in_bytes / MIB / b, 2),
            }
            print(json.dumps(figures), flush=True)
    print(json.dumps(describe()))


if __name__ == "__main__":
    app.run(main)
