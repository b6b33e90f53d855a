"""Opening prepared datasets, with errors that say how to prepare them.

A prepared dataset is a tfds ArrayRecord dataset plus the training statistics written next to
it by `prepare` (see mean_image.py). Reading needs neither TensorFlow nor the network.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from resnet_jax import datasets
from resnet_jax.data import config as config_lib
from resnet_jax.errors import DatasetMissingError

MEAN_FILE = "per_pixel_mean.npz"  # in the dataset's version directory; keys are split specs
SIZES_FILE = "image_sizes.npz"  # beside it: (height, width) of every image of a split, keys are split specs
_HEADER_CHUNK = 1024


def holdout_specs(name: str) -> tuple[str, str]:
    """The tfds split specs of the held-out training split ('train' with holdout_val) and of split 'val'."""
    held_out = datasets.get(name).holdout
    return f"train[:-{held_out}]", f"train[-{held_out}:]"


def prepare_command(name: str, data_dir: str | None) -> str:
    data_dir_flag = f" --data_dir={data_dir}" if data_dir else ""
    return f"python -m resnet_jax.data.prepare {name}{data_dir_flag} {datasets.get(name).sources}"


def _missing(cfg: ml_collections.ConfigDict, what: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"{cfg.name} is not (completely) prepared in {_data_dir(cfg)} ({what}); prepare it with: "
        f"{prepare_command(cfg.name, cfg.data_dir)}"
    )


def _data_dir(cfg: ml_collections.ConfigDict) -> str:
    return cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"


def split_spec(cfg: ml_collections.ConfigDict, split: str) -> str:
    """The tfds split spec behind one of our split names ('train', 'val', 'test', 'validation')."""
    splits = datasets.get(cfg.name).split_names(cfg.holdout_val)
    if split not in splits:
        raise ValueError(f"Split {split!r} is not one of {splits} for {cfg.name} with holdout_val={cfg.holdout_val}.")
    if cfg.holdout_val and split in ("train", "val"):
        return holdout_specs(cfg.name)[split == "val"]
    return split


def builder(cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The tfds builder of a prepared dataset; DatasetMissingError if it is absent or half-written."""
    config_lib.validate(cfg)
    result = tfds.builder(cfg.name, data_dir=cfg.data_dir)
    if not result.is_prepared():
        raise _missing(cfg, f"no finished dataset at {result.data_path}")
    if result.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise _missing(cfg, f"it is stored as {result.info.file_format.value}, not array_record")
    held_out = datasets.get(cfg.name).holdout
    if cfg.holdout_val and result.info.splits["train"].num_examples <= held_out:
        raise ValueError(
            f"data.holdout_val holds out {held_out} training examples, but this {cfg.name} "
            f"has only {result.info.splits['train'].num_examples}."
        )
    return result


def open_split(cfg: ml_collections.ConfigDict, split: str):
    """Random-access source of examples {'image': encoded bytes, 'label': int, ...}."""
    prepared = builder(cfg)
    spec = split_spec(cfg, split)
    base_split = spec.split("[")[0]
    if base_split not in prepared.info.splits:
        raise _missing(cfg, f"split {base_split!r} is absent")
    missing_files = [f for f in prepared.info.splits[base_split].filepaths if not f.exists()]
    if missing_files:
        raise _missing(cfg, f"{len(missing_files)} shard file(s) are missing, e.g. {missing_files[0]}")
    return prepared.as_data_source(spec, decoders={"image": tfds.decode.SkipDecoding()})


def num_examples(cfg: ml_collections.ConfigDict, split: str) -> int:
    """Examples in `split` (one of the dataset's splits, or 'val' with holdout_val)."""
    spec = split_spec(cfg, split)
    return builder(cfg).info.splits[spec].num_examples


def normalization(cfg: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(mean image, per-channel std or None, padding value) that the views apply, in [0, 1] units.

    The paper's ('per_pixel_mean'): the per-pixel training mean, no division, and CIFAR crops padded with 0 after
    the subtraction, i.e. the mean colour. 'per_channel' (a named option for other recipes): constant channel means
    and standard deviations from the config, and padding with black (`data.pad_with='black'`, as mmpretrain pads
    the raw image) or the mean colour.
    """
    if cfg.normalization == "per_pixel_mean":
        return mean_image(cfg), None, np.zeros(3, np.float32)
    shape = datasets.get(cfg.name).image_shape
    mean = np.asarray(cfg.channel_mean, np.float32) / 255
    std = np.asarray(cfg.channel_std, np.float32) / 255
    pad = (0 - mean) / std if cfg.pad_with == "black" else np.zeros(3, np.float32)
    return np.broadcast_to(mean, shape).astype(np.float32), std, pad.astype(np.float32)


def mean_image(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """float32 per-pixel mean of the training split, in the [0, 1] scale of the pipeline."""
    path = builder(cfg).data_path / MEAN_FILE
    spec = split_spec(cfg, "train")
    if not path.exists():
        raise _missing(cfg, f"the per-pixel mean {path} was not written")
    with path.open("rb") as f, np.load(f) as means:
        if spec not in means:
            raise _missing(cfg, f"{path} has no mean for {spec!r}")
        return means[spec].astype(np.float32)


def image_sizes(cfg: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """int32 [N, 2]: (height, width) of every image of `split`, read from the JPEG headers.

    Reading every record once costs about a minute for ImageNet's validation set, so the result is kept in
    image_sizes.npz beside the dataset (written by `prepare`, or here the first time, where the directory can be
    written).
    """
    from resnet_jax.data import images

    path = builder(cfg).data_path / SIZES_FILE
    spec = split_spec(cfg, split)
    stored = {}
    if path.exists():
        with path.open("rb") as f, np.load(f) as sizes:
            stored = {key: sizes[key] for key in sizes.files}
    if spec in stored:
        return stored[spec]
    source = open_split(cfg, split)
    sizes = np.zeros((len(source), 2), np.int32)
    for start in range(0, len(source), _HEADER_CHUNK):
        indices = list(range(start, min(start + _HEADER_CHUNK, len(source))))
        for i, record in zip(indices, source.__getitems__(indices), strict=True):
            try:
                sizes[i] = images.jpeg_shape(record["image"])
            except images.CorruptImageError:
                sizes[i] = (1, 1)  # any bucket: the evaluation meets the record and applies data.corrupt_policy
    try:
        partial = path.parent / f".{SIZES_FILE}.{os.getpid()}.partial"
        with partial.open("wb") as f:
            np.savez(f, **stored, **{spec: sizes})
        partial.replace(path)
    except OSError:
        pass  # a read-only dataset: computed again next time
    return sizes
