"""The ImageNet training loop on the real JPEG pipeline against its bare step, and torchvision's ResNet-50 beside ours.

    python -m benchmarks.imagenet_loop --worker_count=16 [--batch_size=256] [--steps=120] [--torch]

Prepares the 1000 real ImageNet images of ../shared/data as an ImageNet-format dataset (the same images as training
and validation split), then, for each of --dtypes, measures ResNet-50 with the paper's recipe
(configs/imagenet_r50.py):
  bare       images/s of the jitted train step on a float batch already on the devices (benchmarks/bare_step.py);
  loop       images/s of the real training loop (`resnet_jax.train.loop.train_and_evaluate`: grain with --worker_count
             processes decoding and augmenting the JPEGs, uint8 crops finished inside the step), the median of its
             logged windows after the first (which holds the compilation);
  loop/bare  1 when the input pipeline keeps up; below 1 by the share of time the step waited for its input.
The host's pipeline capacity is about `benchmarks/input_pipeline.py`'s images/s per core times --worker_count: when
loop/bare is below 1, that figure says how many cores the step needs.
With --torch it also times torchvision's ResNet-50 (v1.5) train step with PyTorch's fast recipe (channels-last,
bf16 autocast, `torch.compile`, SGD with momentum) on synthetic batches, beside our v1.5 bf16 bare step: the ratio
a GPU user would weigh. One JSON line per figure.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from absl import flags, logging

from benchmarks.bare_step import time_train_step
from benchmarks.input_pipeline import DEFAULT_DATA, prepare_imagenet_samples
from configs import imagenet_r50
from resnet_jax import models
from resnet_jax.core import cli
from resnet_jax.core.machine import describe
from resnet_jax.models import create_model
from resnet_jax.recipe.config import model_from_config
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.rundir import RunDir
from resnet_jax.train.loop import train_and_evaluate

flags.DEFINE_string("data", str(DEFAULT_DATA), "The shared data folder (imagenet_samples/).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to measure.")
flags.DEFINE_integer("batch_size", 256, "Global batch size (the paper's: 256).")
flags.DEFINE_integer("steps", 120, "Training steps of the measured loop (a multiple of 6).")
flags.DEFINE_integer("bare_steps", 30, "Timed steps of the bare step.")
flags.DEFINE_integer("worker_count", os.cpu_count(), "grain worker processes decoding and augmenting.")
flags.DEFINE_integer("bn_group_size", 32, "BN statistics per this many examples (the paper's per-GPU 32).")
flags.DEFINE_bool("torch", False, "Also time torchvision's ResNet-50 with channels-last, bf16 and torch.compile.")
FLAGS = flags.FLAGS


def _config(data_dir: Path, dtype: str):
    config = imagenet_r50.get_config()
    config.data.data_dir, config.data.worker_count = str(data_dir), FLAGS.worker_count
    config.model.dtype, config.model.bn_group_size = dtype, FLAGS.bn_group_size
    config.batch_size, config.num_steps = FLAGS.batch_size, FLAGS.steps
    config.log_every_steps = FLAGS.steps // 6
    config.eval.every_steps = config.checkpoint_every_steps = FLAGS.steps
    # The loop is measured, not the end of the run: a 1-crop test, no BN recomputation.
    config.eval.final_protocol, config.bn_statistics, config.bn_recompute_examples = "1crop", "moving_average", 0
    return config


def loop_images_per_sec(data_dir: Path, dtype: str) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(_config(data_dir, dtype), workdir)
        windows = [r["images_per_sec"] for r in RunDir(workdir).read_metrics() if r["kind"] == "train"][1:]
    return statistics.median(windows)


def bare_images_per_sec(model) -> float:
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4)
    seconds, _ = time_train_step(
        model, optimizer, models.spec("resnet50").input_shape, 1000, FLAGS.batch_size, FLAGS.bare_steps
    )
    return FLAGS.batch_size / seconds


def torch_images_per_sec() -> dict:
    """torchvision's ResNet-50 train step, PyTorch's fast recipe, on a synthetic batch already on the device."""
    import torch
    import torchvision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torchvision.models.resnet50().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    compiled = torch.compile(model)
    images = torch.randn(FLAGS.batch_size, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (FLAGS.batch_size,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(compiled(images), labels)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(3):  # the first calls compile
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    compile_sec = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(FLAGS.bare_steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "images_per_sec": FLAGS.batch_size * FLAGS.bare_steps / (time.perf_counter() - start),
        "compile_sec": compile_sec,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }


def main(argv: list[str]) -> None:
    del argv
    cli.initialize()
    machine = {**describe(), "worker_count": FLAGS.worker_count, "batch_size": FLAGS.batch_size}
    with tempfile.TemporaryDirectory() as work:
        data_dir, _ = prepare_imagenet_samples(Path(FLAGS.data), Path(work), splits=("train", "val"))
        for dtype in FLAGS.dtypes:
            bare = bare_images_per_sec(model_from_config(_config(data_dir, dtype).model))
            loop = loop_images_per_sec(data_dir, dtype)
            name = f"imagenet_loop/resnet50/{dtype}"
            figure = {
                "name": name,
                "bare_images_per_sec": bare,
                "loop_images_per_sec": loop,
                "loop_over_bare": loop / bare,
            }
            print(json.dumps({**figure, **machine}), flush=True)
    if FLAGS.torch:
        ours = bare_images_per_sec(create_model("resnet50", num_classes=1000, stride_on_3x3=True, dtype="bfloat16"))
        try:
            theirs = torch_images_per_sec()
        except ImportError as error:
            logging.warning("Skipping the torchvision comparison: %s", error)
            return
        figure = {
            "name": "imagenet_loop/resnet50_v1.5/bfloat16/ours_vs_torchvision",
            "ours_bare_images_per_sec": ours,
            "torchvision_images_per_sec": theirs.pop("images_per_sec"),
            **theirs,
        }
        figure["ours_over_torchvision"] = ours / figure["torchvision_images_per_sec"]
        print(json.dumps({**figure, **machine}), flush=True)


if __name__ == "__main__":
    cli.define_distributed_flags()
    cli.run(main)
