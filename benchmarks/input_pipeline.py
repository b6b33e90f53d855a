"""Images per second per CPU core of the training input pipelines, on the real images of ../shared/data.

    python benchmarks/input_pipeline.py [--data=../shared/data] [--rounds=3]

Prints one JSON line per figure:
  imagenet_train_transform      ImageNetTrainView (decode at reduced size, scale augmentation, crop, flip, the
                                PCA lighting draw; the mean and the offset are applied later on the devices) on
                                the 1000 real ImageNet JPEGs held in memory;
  imagenet_train_transform_pil  the same transform written straightforwardly with PIL (full decode, resize
                                the whole image, crop), measured in the same rounds, for the speed-up;
  imagenet_train_pipeline       the whole loader: tfds ArrayRecord records -> grain -> batches of 32;
  cifar10_train_transform       CifarTrainView on 10,000 real CIFAR-10 training images;
  cifar10_train_pipeline        the whole loader on those images, batches of 128.
Everything runs in this one process and thread, so images/s is per core. A/B rounds alternate, and the best
round counts, to keep other load on the machine out of the comparison.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from resnet_jax.data import transforms
from resnet_jax.data.options import default_data_config
from resnet_jax.data.pipeline import train_iterator
from resnet_jax.data.prepare import prepare
from resnet_jax.data.prepared import PreparedDataset

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pil_train_transform(jpeg: bytes, rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """The paper's ImageNet training transform, written the straightforward way."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    scale = int(rng.integers(256, 481))
    factor = scale / min(image.size)
    width, height = max(scale, round(image.width * factor)), max(scale, round(image.height * factor))
    image = image.resize((width, height), Image.BILINEAR)
    top, left = int(rng.integers(0, height - 224 + 1)), int(rng.integers(0, width - 224 + 1))
    image = image.crop((left, top, left + 224, top + 224))
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, np.float32) / 255 - mean
    return pixels + transforms.pca_lighting(rng, 0.1)


def images_per_second(function, items, rounds: int) -> list[float]:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            function(item)
        rates.append(len(items) / (time.perf_counter() - start))
    return rates


def interleaved(functions: dict, items, rounds: int) -> dict[str, float]:
    """Best images/s of each function, alternating them round by round."""
    rates = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            rates[name] += images_per_second(function, items, 1)
    return {name: max(r) for name, r in rates.items()}


def pipeline_images_per_second(cfg, batch_size: int, batches: int) -> float:
    dataset = PreparedDataset.open(cfg)
    iterator = train_iterator(dataset, cfg, global_batch_size=batch_size, seed=0, process_index=0, process_count=1)
    next(iterator)  # opening files, first reads
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def single_core_config(name: str, data_dir: Path):
    cfg = default_data_config(name)
    cfg.data_dir, cfg.worker_count, cfg.read_threads = str(data_dir), 0, 0
    return cfg


def prepare_imagenet_samples(shared: Path, work: Path, splits: tuple[str, ...] = ("train",)) -> tuple[Path, list]:
    """The 1000 real ImageNet sample images of `shared` as an ImageNet-format tfds dataset under `work` (the same
    images in each class-folder split of `splits`: "train", "val"); returns its data dir and the label rows."""
    work.mkdir(parents=True, exist_ok=True)
    samples = shared / "imagenet_samples"
    rows = [line.split("\t") for line in (samples / "labels.tsv").read_text().splitlines()[1:]]
    source = work / "imagenet_source"
    for _, wnid, filename, *_ in rows:
        for split in splits:
            (source / split / wnid).mkdir(parents=True, exist_ok=True)
            (source / split / wnid / filename).symlink_to(samples / "images" / filename)
    prepare("imagenet2012", source=str(source), data_dir=str(work / "tfds"))
    return work / "tfds", rows


def imagenet_figures(shared: Path, work: Path, rounds: int) -> list[dict]:
    data_dir, rows = prepare_imagenet_samples(shared, work)
    samples = shared / "imagenet_samples"
    cfg = single_core_config("imagenet2012", data_dir)
    mean = PreparedDataset.open(cfg).mean_image
    jpegs = [(samples / "images" / filename).read_bytes() for _, _, filename, *_ in rows]
    view = transforms.ImageNetTrainView()
    rng = np.random.default_rng(0)
    best = interleaved(
        {
            "imagenet_train_transform": lambda jpeg: view({"image": jpeg}, rng),
            "imagenet_train_transform_pil": lambda jpeg: pil_train_transform(jpeg, rng, mean),
        },
        jpegs,
        rounds,
    )
    speedup = best["imagenet_train_transform"] / best["imagenet_train_transform_pil"]
    return [
        {
            "name": "imagenet_train_transform",
            "images_per_sec_per_core": best["imagenet_train_transform"],
            "speedup_vs_pil": speedup,
            "images": len(jpegs),
        },
        {
            "name": "imagenet_train_transform_pil",
            "images_per_sec_per_core": best["imagenet_train_transform_pil"],
            "images": len(jpegs),
        },
        {
            "name": "imagenet_train_pipeline",
            "batch_size": 32,
            "images_per_sec_per_core": max(pipeline_images_per_second(cfg, 32, 30) for _ in range(rounds)),
        },
    ]


def cifar_figures(shared: Path, work: Path, rounds: int, count: int = 10_000) -> list[dict]:
    work.mkdir(parents=True)
    tarball = work / "cifar_train_slice.tar"
    with tarfile.open(shared / "cifar10" / "cifar-10-images-jpg.tar.gz") as src, tarfile.open(tarball, "w") as dst:
        kept = {"train": 0, "test": 0}
        for member in src:
            split = member.name.split("/")[1] if member.isfile() else None
            if split and kept[split] < (count if split == "train" else 100):
                kept[split] += 1
                dst.addfile(member, io.BytesIO(src.extractfile(member).read()))
    prepare("cifar10", source=str(tarball), data_dir=str(work / "tfds"))
    cfg = single_core_config("cifar10", work / "tfds")
    dataset = PreparedDataset.open(cfg)
    records = dataset.source("train")
    records = records.__getitems__(list(range(len(records))))
    view = transforms.CifarTrainView(dataset.mean_image)
    rng = np.random.default_rng(0)
    rate = max(images_per_second(lambda record: view(record, rng), records, rounds))
    return [
        {"name": "cifar10_train_transform", "images_per_sec_per_core": rate, "images": len(records)},
        {
            "name": "cifar10_train_pipeline",
            "batch_size": 128,
            "images_per_sec_per_core": max(pipeline_images_per_second(cfg, 128, 40) for _ in range(rounds)),
        },
    ]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions; the best counts")
    args = parser.parse_args()
    machine = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }
    with tempfile.TemporaryDirectory() as work:
        figures = imagenet_figures(args.data, Path(work) / "imagenet", args.rounds)
        figures += cifar_figures(args.data, Path(work) / "cifar", args.rounds)
    for figure in figures:
        figure["images_per_sec_per_core"] = round(figure["images_per_sec_per_core"], 1)
        if "speedup_vs_pil" in figure:
            figure["speedup_vs_pil"] = round(figure["speedup_vs_pil"], 2)
        print(json.dumps({**figure, **machine}), flush=True)


if __name__ == "__main__":
    main()
