"""Prepare a dataset once: a tfds ArrayRecord dataset plus its per-pixel training mean.

  python -m resnet_jax.data.prepare cifar10 [--source=PATH] [--data_dir=DIR]
  python -m resnet_jax.data.prepare cifar100 [--source=PATH] [--data_dir=DIR]
  python -m resnet_jax.data.prepare imagenet2012 --source=PATH [--data_dir=DIR]

cifar10 and cifar100 without --source are downloaded and built by tfds' own builders (these
need the network and TensorFlow, whose image encoder they use). Their --source is the original
python tarball (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`), a directory holding it, or
class folders train/<class>/, test/<class>/ (directory or tarball, e.g. the JPEG copy
cifar-10-images-jpg.tar.gz). imagenet2012 --source is a directory of class folders
(train/<wnid>/, val/<wnid>/), or tfds' manual directory with ILSVRC2012_img_{train,val}.tar
(built by tfds' builder, which needs TensorFlow). --data_dir defaults to $TFDS_DATA_DIR or
~/tensorflow_datasets. Running it again reuses what is already there.

A source that is missing, unreadable or truncated, a class folder with no images, an image that does not decode, or
a folder that is not a class of the dataset ends the command with one line naming the file and the fix (exit status
2), and leaves nothing in the data directory that a run would take for a prepared dataset. Other libraries' progress
bars and INFO lines show with --verbosity=1.

From code: `resnet_jax.data.prepare.prepare(name, source=None, data_dir=None)`; a training run calls
`ensure_prepared` (below), which prepares a missing dataset when its config names local files.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from absl import flags, logging

from resnet_jax.core import cli, multihost
from resnet_jax.core.errors import ConfigError, DatasetMissingError, PreparationError
from resnet_jax.data import cifar, datasets, imagenet, mean_image
from resnet_jax.data.prepared import MEAN_FILE, PreparedDataset

# What reading a damaged source raises: a truncated gzip stream, a broken tar file, an unreadable file.
_UNREADABLE = (OSError, EOFError, tarfile.TarError, zlib.error)

_TFDS_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_FROM_FILES = {"cifar10": cifar.Cifar10FromFiles, "cifar100": cifar.Cifar100FromFiles}


def _builder(name: str, source: Path | None, data_dir: str | None) -> tuple[tfds.core.DatasetBuilder, Path | None]:
    """The builder that writes `name` from `source`, and the manual dir it needs (if any)."""
    kwargs = {"data_dir": data_dir, "file_format": "array_record"}
    if name in _FROM_FILES and source is None:
        return tfds.builder(name, **kwargs), None
    if name in _FROM_FILES:
        return _FROM_FILES[name](source=source, **kwargs), None
    if name == "imagenet2012":
        if source is None:
            raise ValueError("imagenet2012 needs --source: class folders or the tfds manual directory.")
        if any((source / f).is_dir() for names in imagenet.SPLIT_FOLDERS.values() for f in names):
            return imagenet.Imagenet2012FromFolders(source=source, **kwargs), None
        if any((source / f).exists() for f in _TFDS_MANUAL_FILES):
            return tfds.builder(name, **kwargs), source
        raise PreparationError(
            f"{source} has neither class folders (train/<wnid>/, val/<wnid>/) nor {' / '.join(_TFDS_MANUAL_FILES)}."
        )
    raise ValueError(f"{name} cannot be prepared from a local --source; omit it to download.")


def prepare(name: str, source: str | os.PathLike | None = None, data_dir: str | None = None) -> Path:
    """Builds dataset `name` (if not built yet) and its per-pixel mean; returns the dataset directory.

    Raises `PreparationError` (a `UserError`) for a source that is missing, unreadable or wrong, after removing what
    this call wrote: a dataset is only ever left whole, with its mean.
    """
    datasets.get(name)  # an unknown name is an error naming the known ones
    source = Path(source).expanduser() if source is not None else None
    if source is not None and not source.exists():
        raise PreparationError(f"--source {source} does not exist; give the path of the dataset's files.")
    builder, manual_dir = _builder(name, source, data_dir)
    existed = builder.data_path.exists()
    try:
        _build(name, builder, manual_dir, data_dir)
    except BaseException as error:
        if not existed and builder.data_path.exists():  # half of what this call wrote: never taken for a dataset
            shutil.rmtree(builder.data_path, ignore_errors=True)
        if isinstance(error, _UNREADABLE) and not isinstance(error, PreparationError):
            raise PreparationError(
                f"Preparing {name} from {source} failed reading it: {error!r}. The file may be truncated or damaged: "
                "copy or download it again and rerun."
            ) from error
        raise
    return Path(os.fspath(builder.data_path))


def _build(name: str, builder: tfds.core.DatasetBuilder, manual_dir: Path | None, data_dir: str | None) -> None:
    """The tfds dataset (tfds writes it into incomplete.* and renames it when whole), then its statistics."""
    facts = datasets.get(name)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP
            )
        )
    except ModuleNotFoundError as e:
        if e.name != "tensorflow":
            raise
        raise ModuleNotFoundError(
            f"tfds' own {name} builder needs TensorFlow: `pip install tensorflow-cpu` for this "
            "preparation (reading and training do not need it), or prepare from local files with "
            "--source (see python -m resnet_jax.data.prepare --help).",
            name="tensorflow",
        ) from e

    if not (builder.data_path / MEAN_FILE).exists():
        # Read through the registered builder, as training does (ours are not picklable for workers).
        reader = tfds.builder(name, data_dir=data_dir)
        train = reader.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
        logging.info("Computing the per-pixel mean of %d training images.", len(train))
        # Worker processes take seconds to start: worth it for ImageNet-sized decoding only.
        workers = os.cpu_count() if facts.imagenet_like and len(train) > 10_000 else 0
        means = mean_image.compute(train, name, worker_count=workers)
        mean_image.store(builder.data_path, means)
    if "multiscale" in facts.protocols and "validation" in builder.info.splits:
        PreparedDataset(name, data_dir).image_sizes("validation")  # the multi-scale protocol's canvas buckets


def ensure_prepared(data_config: Any, prepare_from: str | None = None) -> PreparedDataset:
    """The dataset `data_config` names, opened; prepared first from `prepare_from` if it is missing and given."""
    try:
        return PreparedDataset.open(data_config)
    except DatasetMissingError:
        if prepare_from is None:
            raise
    logging.info("Dataset %s is missing; preparing it from %s.", data_config.name, prepare_from)
    if multihost.is_main():
        prepare(data_config.name, source=prepare_from, data_dir=data_config.data_dir)
    multihost.sync("dataset prepared")
    return PreparedDataset.open(data_config)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise ConfigError(f"Name one dataset to prepare, one of {', '.join(datasets.DATASETS)} (see --help).")
    quiet = not flags.FLAGS["verbosity"].present
    if quiet:
        tfds.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stdout):  # tfds prints its progress there
        path = prepare(argv[1], source=flags.FLAGS.source, data_dir=flags.FLAGS.data_dir)
    print(path)


if __name__ == "__main__":
    flags.DEFINE_string("source", None, "Local files to build from (see above).")
    flags.DEFINE_string("data_dir", None, "tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
    cli.run(main)
