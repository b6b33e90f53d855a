"""Evaluation throughput of the paper's ImageNet test protocols: 1-crop, 10-crop and multi-scale.

    python -m benchmarks.eval_throughput --model=resnet50 --batch_size=8 --steps=3

For each protocol two figures, since either side can be the bottleneck: images/s of the jitted evaluation step on
in-memory batches of the protocol's shapes (the accelerator's share), and images/s per core of the protocol's view
transform on the 1000 real ImageNet images in ../shared/data (the host's share). Each line also gives the cost
relative to 1-crop: 10-crop should cost about 10x. Multi-scale runs the whole image at five scales (shorter side
224 to 640) on fixed square canvases, so its cost is set by the canvases' area (see resnet_jax/data/protocols.py).
"""

import json
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh

from benchmarks.machine import describe
from resnet_jax.data import protocols, put_on_mesh
from resnet_jax.evaluation import error_counts
from resnet_jax.models import MODEL_NAMES, create_model, input_shape, is_cifar
from resnet_jax.sharding import batch_sharded, make_mesh, replicated

flags.DEFINE_enum("model", "resnet50", [n for n in MODEL_NAMES if not is_cifar(n)], "An ImageNet model name.")
flags.DEFINE_integer("batch_size", 8, "Images per evaluation step (10-crop: 10 views each).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_integer("steps", 3, "Timed steps per protocol (after one compile-and-warm-up step).")
flags.DEFINE_list("protocols", ["1crop", "10crop", "multiscale"], "Protocols to time; 1crop first for the cost ratio.")
flags.DEFINE_integer("images", 100, "Real images timed through each view transform (0: skip the host figure).")
SHARED_IMAGES = pathlib.Path(__file__).resolve().parents[2] / "shared/data/imagenet_samples/images"
flags.DEFINE_string("images_dir", str(SHARED_IMAGES), "Folder of ImageNet JPEGs for the view transforms.")
FLAGS = flags.FLAGS

VIEWS = {"1crop": protocols.OneCropView, "10crop": protocols.TenCropView, "multiscale": protocols.MultiScaleView}


def device_images_per_sec(model: nn.Module, variables: Any, protocol: str, view: Any, mesh: Mesh) -> float:
    example = view.empty()
    batch = {k: np.broadcast_to(v, (FLAGS.batch_size, *v.shape)).copy() for k, v in example.items()}
    batch.update(label=np.zeros(FLAGS.batch_size, np.int32), mask=np.ones(FLAGS.batch_size, bool))
    batch = put_on_mesh(batch, mesh)
    step = jax.jit(
        lambda v, b: error_counts(model, protocol, v, b),
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
    )
    jax.block_until_ready(step(variables, batch))
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        counts = step(variables, batch)
    jax.block_until_ready(counts)
    return FLAGS.batch_size * FLAGS.steps / (time.perf_counter() - start)


def host_images_per_sec(view: Any, files: list[pathlib.Path]) -> float:
    records = [{"image": f.read_bytes()} for f in files]
    start = time.perf_counter()
    for record in records:
        view(record)
    return len(records) / (time.perf_counter() - start)


def main(argv):
    del argv
    model = create_model(FLAGS.model, num_classes=1000, dtype=FLAGS.dtype)
    mesh = make_mesh()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *input_shape(FLAGS.model)), jnp.float32))
    mean_image = np.full((224, 224, 3), 114.0, np.float32)
    files = sorted(pathlib.Path(FLAGS.images_dir).glob("*.JPEG"))[: FLAGS.images]
    if FLAGS.images and not files:
        raise app.UsageError(
            f"No *.JPEG in --images_dir={FLAGS.images_dir}; point it at the shared ImageNet samples "
            "or pass --images=0 to time the evaluation step alone."
        )
    unknown = set(FLAGS.protocols) - set(VIEWS)
    if unknown:
        raise app.UsageError(f"Unknown --protocols {sorted(unknown)}; choose from {list(VIEWS)}.")
    machine = describe()
    rates = {}
    for protocol in FLAGS.protocols:
        view = VIEWS[protocol](mean_image)
        rates[protocol] = device_images_per_sec(model, variables, protocol, view, mesh)
        result = {
            "name": f"eval/{FLAGS.model}/{FLAGS.dtype}/{protocol}/batch{FLAGS.batch_size}",
            "device_images_per_sec": rates[protocol],
        }
        if "1crop" in rates:
            result["cost_vs_1crop"] = rates["1crop"] / rates[protocol]
        if files:
            result["host_images_per_sec_per_core"] = host_images_per_sec(view, files)
        print(json.dumps({**result, **machine}), flush=True)


if __name__ == "__main__":
    app.run(main)
