"""CIFAR-10 from local files, written as the tfds `cifar10` dataset (same name, version, features).

Two sources are understood:
  * the original `cifar-10-python.tar.gz` (or a directory holding it): examples keep tfds' keys
    and ids ("train_00000", ...), so the prepared dataset is the one `tfds` would download;
  * class folders, as a directory or a tarball: `.../train/<class>/<file>` and
    `.../test/<class>/<file>`, class names as in `batches.meta` (e.g. the JPEG copy
    `cifar-10-images-jpg.tar.gz`). The id of an example is its path from the split folder's
    parent, e.g. "train/frog/0000.jpg".
Images are stored as PNG of their decoded pixels, as tfds stores CIFAR, so reading is the same
whichever source was used. Building needs PIL only (no TensorFlow).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PYTHON_TARBALL = "cifar-10-python.tar.gz"
_PYTHON_BATCHES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
_IMAGE_SHAPE = (32, 32, 3)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches without letting a tampered file run arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in a protocol-2 pickle
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _python_batches(tarball: Path, split: str) -> Iterator[tuple[np.ndarray, int]]:
    """(HWC uint8 image, label) in the original order of the split's batches."""
    with tarfile.open(tarball) as archive:
        members = {PurePosixPath(m.name).name: m for m in archive if m.isfile()}
        for batch_name in _PYTHON_BATCHES[split]:
            if batch_name not in members:
                raise FileNotFoundError(f"{tarball} has no {batch_name}; is it cifar-10-python.tar.gz?")
            batch = _NumpyOnlyUnpickler(archive.extractfile(members[batch_name]), encoding="bytes").load()
            data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            yield from zip(data, batch[b"labels"], strict=True)


def _split_and_class(path: PurePosixPath) -> tuple[str, str] | None:
    """("train" | "test", class folder) for a path .../<split>/<class>/<file>, else None."""
    if len(path.parts) < 3 or path.parts[-3] not in _PYTHON_BATCHES or path.name.startswith("."):
        return None
    return path.parts[-3], path.parts[-2]


def _image_files(source: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(relative path, contents) of the .../<split>/<class>/<file> files of a directory or tarball."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            relative = PurePosixPath(path.relative_to(source).as_posix())
            if path.is_file() and _split_and_class(relative):
                yield relative, path.read_bytes()
        return
    with tarfile.open(source) as archive:
        for member in archive:
            if member.isfile() and _split_and_class(PurePosixPath(member.name)):
                yield PurePosixPath(member.name), archive.extractfile(member).read()


def _class_folder_files(source: Path) -> dict[str, list[tuple[str, bytes]]]:
    """{split: [(id, encoded image)]} sorted by id, from a directory or tarball of class folders."""
    files = {split: [] for split in _PYTHON_BATCHES}
    for path, contents in _image_files(source):
        split, label_name = _split_and_class(path)
        if label_name not in LABELS:
            raise ValueError(f"{source}: folder {label_name!r} of {path} is not a CIFAR-10 class {LABELS}")
        files[split].append((f"{split}/{label_name}/{path.name}", contents))
    for split, examples in files.items():
        if not examples:
            raise FileNotFoundError(
                f"{source} has no {split}/<class>/<image> files; expected a {PYTHON_TARBALL} or "
                "class folders train/<class>/ and test/<class>/."
            )
        examples.sort()
    return files


def _decoded(image_bytes: bytes, name: str) -> Image.Image:
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    if (image.height, image.width, 3) != _IMAGE_SHAPE:
        raise ValueError(f"{name} is {image.width}x{image.height}, not a 32x32 CIFAR image")
    return image


class Cifar10FromFiles(tfds.image_classification.Cifar10, skip_registration=True):
    """tfds' cifar10, generated from `source` instead of the download."""

    name = "cifar10"
    # tfds would look for a checksums file beside this module; there is nothing to download.
    code_path = None

    def __init__(self, *, source: str | os.PathLike, **kwargs):
        self._source = Path(source)
        super().__init__(**kwargs)

    def _python_tarball(self) -> Path | None:
        if self._source.is_dir():
            candidate = self._source / PYTHON_TARBALL
            return candidate if candidate.exists() else None
        return self._source if self._source.name == PYTHON_TARBALL else None

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        if not self._source.exists():
            raise FileNotFoundError(f"CIFAR-10 source {self._source} does not exist")
        self.info.features["label"].names = list(LABELS)
        tarball = self._python_tarball()
        if tarball is not None:
            return {split: self._from_python_tarball(tarball, split) for split in _PYTHON_BATCHES}
        files = _class_folder_files(self._source)
        return {split: self._from_class_folders(examples) for split, examples in files.items()}

    def _from_python_tarball(self, tarball: Path, split: str):
        for index, (image, label) in enumerate(_python_batches(tarball, split)):
            yield (
                index,
                {
                    "id": f"{split}_{index:05d}",
                    "image": Image.fromarray(image),
                    "label": int(label),
                },
            )

    def _from_class_folders(self, examples: list[tuple[str, bytes]]):
        for index, (example_id, image_bytes) in enumerate(examples):
            yield (
                index,
                {
                    "id": example_id,
                    "image": _decoded(image_bytes, example_id),
                    "label": LABELS.index(example_id.split("/")[1]),
                },
            )
