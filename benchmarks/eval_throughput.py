"""Evaluation throughput of the paper's ImageNet test protocols: 1-crop, 10-crop and multi-scale.

    python -m benchmarks.eval_throughput --model=resnet50 --batch_size=8 --steps=3 --images=24

For each protocol two figures, since either side can be the bottleneck: images/s of the jitted evaluation step (the
accelerator's share) and images/s per core of the protocol's view transform on real ImageNet images (the host's
share). 1-crop and 10-crop have one shape; their device figure uses batches of that shape. Multi-scale testing runs
each whole image at five scales and mirrored, on canvases of its aspect bucket: its device figure runs the real views
of the first --images images, batched by bucket as the evaluation does, and reports how many shapes it compiled and
how long that took (once per bucket; JAX's persistent compilation cache keeps them for later runs). Each line gives
the cost relative to 1-crop: 10-crop should cost about 10x, multi-scale about 2 x (its canvases' pixels / 224^2).
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

from resnet_jax.core.machine import describe
from resnet_jax.core.sharding import batch_sharded, make_mesh, replicated
from resnet_jax.data import protocols, put_on_mesh
from resnet_jax.eval.scores import error_counts
from resnet_jax.models import MODEL_NAMES, create_model, spec

flags.DEFINE_enum(
    "model", "resnet50", [n for n in MODEL_NAMES if spec(n).dataset == "imagenet2012"], "An ImageNet model name."
)
flags.DEFINE_integer("batch_size", 8, "Images per evaluation step (10-crop: 10 views each).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_integer("steps", 3, "Timed passes per protocol (after one compile-and-warm-up pass).")
flags.DEFINE_list("protocols", ["1crop", "10crop", "multiscale"], "Protocols to time; 1crop first for the cost ratio.")
flags.DEFINE_integer("images", 24, "Real images through each view transform, and multi-scale's device batches.")
SHARED_IMAGES = pathlib.Path(__file__).resolve().parents[2] / "shared/data/imagenet_samples/images"
flags.DEFINE_string("images_dir", str(SHARED_IMAGES), "Folder of ImageNet JPEGs for the view transforms.")
FLAGS = flags.FLAGS


def _batched(examples: list[dict], batch_size: int) -> list[dict]:
    """Examples grouped into batches of `batch_size` of one shape each, padded with zeros (masked out)."""
    by_shape: dict[tuple, list[dict]] = {}
    for example in examples:
        by_shape.setdefault(tuple(v.shape for v in example.values()), []).append(example)
    batches = []
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            part = group[start : start + batch_size]
            mask = [True] * len(part) + [False] * (batch_size - len(part))
            part = part + [{k: np.zeros_like(v) for k, v in part[0].items()}] * (batch_size - len(part))
            batch = {k: np.stack([e[k] for e in part]) for k in part[0]}
            batches.append({**batch, "label": np.zeros(batch_size, np.int32), "mask": np.array(mask)})
    return batches


def device_figures(model: nn.Module, variables: Any, protocol: str, batches: list[dict], mesh: Mesh) -> dict:
    step = jax.jit(
        lambda v, b: error_counts(model, protocol, v, b),
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
    )
    batches = [put_on_mesh(b, mesh) for b in batches]
    images = sum(int(np.asarray(b["mask"]).sum()) for b in batches)
    start = time.perf_counter()
    for batch in batches:  # compiles each shape once, and warms up
        jax.block_until_ready(step(variables, batch))
    compile_and_warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        for batch in batches:
            counts = step(variables, batch)
    jax.block_until_ready(counts)
    seconds = (time.perf_counter() - start) / FLAGS.steps
    shapes = {tuple(v.shape for k, v in b.items() if k.startswith("image")) for b in batches}
    slots = len(batches) * FLAGS.batch_size  # a few images per bucket leave padding that a whole split would not
    return {
        "device_images_per_sec": images / seconds,
        "device_slots_per_sec": slots / seconds,
        "compiled_shapes": len(shapes),
        "compile_and_first_pass_sec": compile_and_warm,
        "images": images,
        "padded_slots": slots - images,
    }


def host_images_per_sec(view: Any, records: list[dict]) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    examples = [view(record) for record in records]
    return len(records) / (time.perf_counter() - start), examples


def main(argv):
    del argv
    model = create_model(FLAGS.model, num_classes=1000, dtype=FLAGS.dtype)
    mesh = make_mesh()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *spec(FLAGS.model).input_shape), jnp.float32))
    mean_image = np.full((224, 224, 3), 0.45, np.float32)
    files = sorted(pathlib.Path(FLAGS.images_dir).glob("*.JPEG"))[: FLAGS.images]
    if not files:
        raise app.UsageError(f"No *.JPEG in --images_dir={FLAGS.images_dir}; point it at the shared ImageNet samples.")
    unknown = set(FLAGS.protocols) - set(protocols.VIEWS) - {"single"}
    if unknown:
        raise app.UsageError(f"Unknown --protocols {sorted(unknown)}; choose from 1crop, 10crop, multiscale.")
    records = [{"image": f.read_bytes()} for f in files]
    machine = describe()
    rates = {}
    for protocol in FLAGS.protocols:
        view = protocols.VIEWS[protocol](mean_image)
        host_rate, examples = host_images_per_sec(view, records)
        if protocol != "multiscale":  # one shape: full batches of it
            examples = [view.empty()] * FLAGS.batch_size
        figures = device_figures(model, variables, protocol, _batched(examples, FLAGS.batch_size), mesh)
        rates[protocol] = figures["device_images_per_sec"]
        pixels = np.mean([sum(v.size // 3 for k, v in e.items() if k.startswith("image")) for e in examples])
        result = {
            "name": f"eval/{FLAGS.model}/{FLAGS.dtype}/{protocol}/batch{FLAGS.batch_size}",
            **figures,
            "host_images_per_sec_per_core": host_rate,
            "pixels_per_image_vs_224": float(pixels / 224**2),
        }
        if "1crop" in rates:
            result["cost_vs_1crop"] = rates["1crop"] / rates[protocol]
            result["cost_vs_1crop_per_slot"] = rates["1crop"] / figures["device_slots_per_sec"]
        print(json.dumps({**result, **machine}), flush=True)


if __name__ == "__main__":
    app.run(main)
