"""What the JPEG copy of CIFAR-10 costs: ResNet-20 trained and tested on lossless pixels against their JPEG copies.

    python -m experiments.data_control --workdir=workdirs/data_control                 # the paper's 164 epochs
    python -m experiments.data_control --workdir=workdirs/data_control --epochs=30     # a CPU-sized schedule

../shared/data holds the lossless original pixels of the first 1,017 images of each CIFAR-10 batch file, and the
JPEG q75 copy holds the same images: 5,085 training images (data_batch_1..5) and 1,017 test images (test_batch). This
script builds two datasets of exactly those images, one from the lossless pixels and one from their JPEG copies (the
same ids, so the same order), trains ResNet-20 on each with the paper's recipe scaled to that size (`--epochs` passes
over the 5,085 images, batch 128 in BN groups of 64, lr 0.1 divided by 10 at 1/2 and 3/4 of the run, momentum 0.9,
weight decay 1e-4, pad-4 crop and flip), `--runs` seeds each in one program, and tests each on its own 1,017 test
images. It writes control.json and control.md into the workdir: every run's final test error, the mean and standard
deviation per representation, and their difference with its standard error. Reruns resume and skip finished runs.
"""

from __future__ import annotations

import csv
import json
import math
import tarfile
from pathlib import Path

import numpy as np
from absl import flags, logging
from PIL import Image

from configs import cifar10
from resnet_jax.core import cli
from resnet_jax.data import cifar
from resnet_jax.data.prepare import prepare
from resnet_jax.run.rundir import RunDir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
PREFIX = 1017  # lossless images per batch file
REPRESENTATIONS = ("lossless", "jpeg")

FLAGS = flags.FLAGS


def _define_flags() -> None:  # here, not at import: the tests import this module beside other scripts
    flags.DEFINE_string("workdir", None, "Directory for the two datasets, the runs and the report.", required=True)
    flags.DEFINE_string("shared", str(SHARED), "The shared CIFAR-10 folder (lossless prefix, JPEG tarball, index).")
    flags.DEFINE_float("epochs", 164, "Passes over the 5,085 training images (the paper's 64k iterations: 164).")
    flags.DEFINE_integer("runs", 3, "Seeds per representation, trained together in one program.")
    cli.define_distributed_flags()


def _batch_files(split: str) -> list[str]:
    return list(cifar.CIFAR10.batches[split])


def build_sources(shared: Path, out: Path) -> dict[str, Path]:
    """Class-folder sources of the 6,102 images, lossless (PNG) and JPEG, with the same file names."""
    sources = {r: out / f"{r}_source" for r in REPRESENTATIONS}
    if all((s / "done").exists() for s in sources.values()):
        return sources
    with np.load(shared / "cifar10_original_labels_and_lossless_prefix.npz") as npz:
        originals = {key: npz[key] for key in npz.files}  # an NpzFile decompresses an array at every access
    rows = [r for r in csv.DictReader(open(shared / "cifar10_jpeg_index.csv")) if int(r["index_in_file"]) < PREFIX]
    wanted = {"cifar-10-images-jpg/" + r["jpeg_path"]: r for r in rows}
    with tarfile.open(shared / "cifar-10-images-jpg.tar.gz") as archive:
        jpegs = {wanted[m.name]["jpeg_path"]: archive.extractfile(m).read() for m in archive if m.name in wanted}
    for row in rows:
        name = f"{row['original_file']}_{int(row['index_in_file']):04d}"
        folder = f"{row['split']}/{row['class_name']}"
        lossless = originals[f"{row['original_file']}_data_prefix"][int(row["index_in_file"])]
        assert originals[f"{row['original_file']}_labels"][int(row["index_in_file"])] == int(row["label"])
        for source in sources.values():
            (source / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(lossless.reshape(3, 32, 32).transpose(1, 2, 0)).save(
            sources["lossless"] / folder / f"{name}.png"
        )
        (sources["jpeg"] / folder / f"{name}.jpg").write_bytes(jpegs[row["jpeg_path"]])
    for source in sources.values():
        (source / "done").write_text("")
    return sources


def control_config(data_dir: Path, epochs: float, runs: int):
    """ResNet-20 with the paper's recipe scaled to 5,085 images (see the module docstring)."""
    config = cifar10.get_config("resnet20")
    steps = 100 * max(1, round(epochs * 5 * PREFIX / 128 / 100))  # whole hundreds: dispatches, logs, evaluations
    config.num_steps, config.runs = steps, runs
    config.schedule.boundaries = (steps // 2, steps * 3 // 4)
    config.steps_per_dispatch, config.log_every_steps = 25, 100
    config.eval.every_steps = config.checkpoint_every_steps = steps // 4
    config.eval.batch_size = 512  # two batches for the 1,017 test images (the padding is masked out)
    config.data.data_dir = str(data_dir)
    return config


def report(workdir: Path, runs: int, epochs: float) -> dict:
    """Final test errors per representation, their means and standard deviations, and the difference."""
    errors = {}
    for representation in REPRESENTATIONS:
        result = RunDir(workdir / f"resnet20_{representation}").read_result()
        members = result.get("runs", [result])
        errors[representation] = [100 * m["top1_error"] for m in members]
    lossless, jpeg = (np.array(errors[r]) for r in REPRESENTATIONS)
    spread = math.sqrt(lossless.var(ddof=1) / len(lossless) + jpeg.var(ddof=1) / len(jpeg)) if runs > 1 else None
    summary = {
        "test_images": PREFIX,
        "training_images": 5 * PREFIX,
        "epochs": epochs,
        "runs": runs,
        "test_error": errors,
        "mean": {r: float(np.mean(e)) for r, e in errors.items()},
        "std": {r: float(np.std(e, ddof=1)) if runs > 1 else None for r, e in errors.items()},
        "jpeg_minus_lossless": float(jpeg.mean() - lossless.mean()),
        "standard_error": spread,
    }
    (workdir / "control.json").write_text(json.dumps(summary, indent=2))
    lines = ["| data | runs | final test error % per run | mean +- std |", "|---|---:|---|---:|"]
    for r in REPRESENTATIONS:
        std = f" +- {summary['std'][r]:.2f}" if summary["std"][r] is not None else ""
        lines.append(f"| {r} | {runs} | {', '.join(f'{e:.2f}' for e in errors[r])} | {summary['mean'][r]:.2f}{std} |")
    gap = f"{summary['jpeg_minus_lossless']:.2f}" + (f" +- {spread:.2f}" if spread is not None else "")
    lines.append(f"\nJPEG minus lossless: {gap} points (standard error of the difference of the means).")
    (workdir / "control.md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str]) -> None:
    del argv
    cli.initialize()
    from resnet_jax.train.loop import train_and_evaluate

    workdir = Path(FLAGS.workdir)
    sources = build_sources(Path(FLAGS.shared), workdir)
    for representation in REPRESENTATIONS:
        data_dir = workdir / f"tfds_{representation}"
        prepare("cifar10", source=str(sources[representation]), data_dir=str(data_dir))
        run_dir = RunDir(workdir / f"resnet20_{representation}")
        if run_dir.is_finished():
            logging.info("%s: finished earlier, skipping.", representation)
            continue
        if not train_and_evaluate(control_config(data_dir, FLAGS.epochs, FLAGS.runs), str(run_dir.path)):
            logging.info("Preempted; rerun the same command to resume.")
            return
    report(workdir, FLAGS.runs, FLAGS.epochs)
    print((workdir / "control.md").read_text())


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
