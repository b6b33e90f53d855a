"""A prepared dataset, opened and checked once, and what every reader asks of it.

A prepared dataset is a tfds ArrayRecord dataset plus the statistics `prepare` writes next to it (the per-pixel
training mean, `mean_image.py`; the image sizes of ImageNet's validation split). `PreparedDataset` opens its tfds
builder once, checks that it is finished, and answers for the run: the facts of the dataset (`datasets.Dataset`),
its splits (with CIFAR's 45k/5k holdout), their sizes and random-access sources, the mean image, the image sizes and
the normalisation the views apply. Reading needs neither TensorFlow nor the network.
"""

from __future__ import annotations

import functools
import io
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from resnet_jax.core.errors import ConfigError, DatasetMissingError
from resnet_jax.core.files import write_atomically
from resnet_jax.data import datasets

MEAN_FILE = "per_pixel_mean.npz"  # in the dataset's version directory; keys are split specs
SIZES_FILE = "image_sizes.npz"  # beside it: (height, width) of every image of a split, keys are split specs
_HEADER_CHUNK = 1024


def prepare_command(name: str, data_dir: str | None) -> str:
    """The command that prepares dataset `name`, for messages."""
    data_dir_flag = f" --data_dir={data_dir}" if data_dir else ""
    return f"python -m resnet_jax.data.prepare {name}{data_dir_flag} {datasets.get(name).sources}"


class PreparedDataset:
    """Dataset `name` as prepared in `data_dir` (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).

    With `holdout_val`, split 'train' is the training split less its last `facts.holdout` examples and split 'val'
    those examples (CIFAR's 45k/5k). Raises `DatasetMissingError`, with the command that prepares it, if the dataset
    is absent or half-written.
    """

    def __init__(self, name: str, data_dir: str | None = None, holdout_val: bool = False):
        self.facts = datasets.get(name)
        self.data_dir = data_dir
        self.holdout_val = holdout_val
        self.builder = tfds.builder(name, data_dir=data_dir)
        if not self.builder.is_prepared():
            raise self._missing(f"no finished dataset at {self.builder.data_path}")
        if self.builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
            raise self._missing(f"it is stored as {self.builder.info.file_format.value}, not array_record")
        if holdout_val and self.builder.info.splits["train"].num_examples <= self.facts.holdout:
            raise ConfigError(
                f"data.holdout_val holds out {self.facts.holdout} training examples, but this {name} has only "
                f"{self.builder.info.splits['train'].num_examples}."
            )
        self._check_files()
        self._sources: dict[str, Any] = {}

    def _check_files(self) -> None:
        """DatasetMissingError if a shard of a split or the per-pixel mean is missing: one listing of the dataset's
        folder (a run on a pod opens its dataset from a bucket: one request, not one per shard)."""
        present = {p.name for p in self.path.iterdir()}
        if MEAN_FILE not in present:
            raise self._missing(f"the per-pixel mean {self.path / MEAN_FILE} was not written")
        for split, info in self.builder.info.splits.items():
            missing = [f for f in info.filepaths if f.name not in present]
            if missing:
                raise self._missing(f"{len(missing)} shard file(s) of split {split!r} are missing, e.g. {missing[0]}")

    @classmethod
    def open(cls, data_config: Any) -> PreparedDataset:
        """The dataset a run's `config.data` names."""
        return cls(data_config.name, data_config.data_dir, data_config.holdout_val)

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def path(self):
        """The dataset's version directory (where its statistics are stored)."""
        return self.builder.data_path

    def __repr__(self) -> str:
        return f"PreparedDataset({self.name!r}, {os.fspath(self.path)!r})"

    def _missing(self, what: str) -> DatasetMissingError:
        where = self.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        return DatasetMissingError(
            f"{self.name} is not (completely) prepared in {where} ({what}); prepare it with: "
            f"{prepare_command(self.name, self.data_dir)}"
        )

    # --- splits
    @property
    def split_names(self) -> tuple[str, ...]:
        return self.facts.split_names(self.holdout_val)

    def split_spec(self, split: str) -> str:
        """The tfds split spec behind one of our split names ('train', 'val', 'test', 'validation')."""
        if split not in self.split_names:
            raise ValueError(
                f"Split {split!r} is not one of {self.split_names} for {self.name} with holdout_val={self.holdout_val}."
            )
        if self.holdout_val and split in ("train", "val"):
            return self.facts.holdout_specs[split == "val"]
        return split

    def source(self, split: str) -> Any:
        """Random-access source of the split's examples {'image': encoded bytes, 'label': int, ...}, opened once."""
        if split not in self._sources:
            spec = self.split_spec(split)
            base_split = spec.split("[")[0]
            if base_split not in self.builder.info.splits:
                raise self._missing(f"split {base_split!r} is absent")
            missing = [f for f in self.builder.info.splits[base_split].filepaths if not f.exists()]
            if missing:
                raise self._missing(f"{len(missing)} shard file(s) are missing, e.g. {missing[0]}")
            self._sources[split] = self.builder.as_data_source(spec, decoders={"image": tfds.decode.SkipDecoding()})
        return self._sources[split]

    def num_examples(self, split: str) -> int:
        """Examples in `split`."""
        return self.builder.info.splits[self.split_spec(split)].num_examples

    # --- what `prepare` stored beside the dataset
    @functools.cached_property
    def mean_image(self) -> np.ndarray:
        """float32 [H, W, 3] per-pixel mean of the training split, in the [0, 1] scale of the pipeline."""
        path = self.path / MEAN_FILE
        spec = self.split_spec("train")
        if not path.exists():
            raise self._missing(f"the per-pixel mean {path} was not written")
        with path.open("rb") as f, np.load(f) as means:
            if spec not in means:
                raise self._missing(f"{path} has no mean for {spec!r}")
            return means[spec].astype(np.float32)

    @functools.cache  # noqa: B019 - one dataset object per run: the cache lives as long as the run
    def image_sizes(self, split: str) -> np.ndarray:
        """int32 [N, 2]: (height, width) of every image of `split`, read from the JPEG headers.

        Reading every record once costs about a minute for ImageNet's validation set, so the result is kept in
        image_sizes.npz beside the dataset (written by `prepare`, or here the first time, where the directory can be
        written).
        """
        from resnet_jax.data import images

        path = self.path / SIZES_FILE
        spec = self.split_spec(split)
        stored = {}
        if path.exists():
            with path.open("rb") as f, np.load(f) as sizes:
                stored = {key: sizes[key] for key in sizes.files}
        if spec in stored:
            return stored[spec]
        source = self.source(split)
        sizes = np.zeros((len(source), 2), np.int32)
        for start in range(0, len(source), _HEADER_CHUNK):
            indices = list(range(start, min(start + _HEADER_CHUNK, len(source))))
            for i, record in zip(indices, source.__getitems__(indices), strict=True):
                try:
                    sizes[i] = images.jpeg_shape(record["image"])
                except images.CorruptImageError:
                    sizes[i] = (1, 1)  # any bucket: the evaluation meets the record and applies data.corrupt_policy
        try:
            write_atomically(path, npz_bytes({**stored, spec: sizes}))
        except OSError:
            pass  # a read-only dataset: computed again next time
        return sizes

    def normalization(self, data_config: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(mean image, per-channel std or None, padding value) that the views apply, in [0, 1] units.

        The paper's ('per_pixel_mean'): the per-pixel training mean, no division, and CIFAR crops padded with 0 after
        the subtraction, i.e. the mean colour. 'per_channel' (a named option for other recipes): constant channel means
        and standard deviations from the config, and padding with black (`data.pad_with='black'`, as mmpretrain pads
        the raw image) or the mean colour.
        """
        if data_config.normalization == "per_pixel_mean":
            return self.mean_image, None, np.zeros(3, np.float32)
        mean = np.asarray(data_config.channel_mean, np.float32) / 255
        std = np.asarray(data_config.channel_std, np.float32) / 255
        pad = (0 - mean) / std if data_config.pad_with == "black" else np.zeros(3, np.float32)
        return np.broadcast_to(mean, self.facts.image_shape).astype(np.float32), std, pad.astype(np.float32)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """`arrays` as the bytes of an .npz file (to write whole with `write_atomically`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
