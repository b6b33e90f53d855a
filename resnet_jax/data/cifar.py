"""CIFAR-10 and CIFAR-100 from local files, written as the tfds datasets of the same names (version, features).

Two sources are understood for each:
  * the original python tarball (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`, or a directory holding it):
    examples keep tfds' ids ("train_00000", ...), so the prepared dataset is the one tfds would download;
  * class folders, as a directory or a tarball: `.../train/<class>/<file>` and `.../test/<class>/<file>`, class
    names as in the original meta file (e.g. the JPEG copy of CIFAR-10 `cifar-10-images-jpg.tar.gz`). The id of an
    example is its path from the split folder's parent, e.g. "train/frog/0000.jpg". CIFAR-100's coarse label (its
    superclass) follows from the class.
Images are stored as PNG of their decoded pixels, as tfds stores CIFAR, so reading is the same whichever source was
used. Building needs PIL only (no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from resnet_jax.core.errors import PreparationError
from resnet_jax.data import datasets

# CIFAR-100's 20 superclasses and their classes, as on the dataset's page; both lists are in label order when sorted.
_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one CIFAR dataset's original files are laid out."""

    dataset: str  # its name in `resnet_jax.datasets`, which knows its release's tarball and image shape
    batches: dict[str, tuple[str, ...]]  # split -> pickle file names
    label_key: bytes
    labels: tuple[str, ...]  # class names in label order
    coarse_labels: tuple[str, ...] = ()  # superclass names in label order (CIFAR-100)

    @property
    def tarball(self) -> str:
        return datasets.get(self.dataset).archive

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return datasets.get(self.dataset).image_shape

    def coarse_label(self, label: int) -> int:
        fine = self.labels[label]
        return self.coarse_labels.index(next(c for c, members in _SUPERCLASSES.items() if fine in members))


CIFAR10 = Layout(
    "cifar10",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    b"labels",
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)
CIFAR100 = Layout(
    "cifar100",
    {"train": ("train",), "test": ("test",)},
    b"fine_labels",
    tuple(sorted(c for members in _SUPERCLASSES.values() for c in members)),
    tuple(sorted(_SUPERCLASSES)),
)


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


def python_batches(tarball: Path, layout: Layout, split: str) -> Iterator[tuple[np.ndarray, int]]:
    """(HWC uint8 image, label) in the original order of the split's batches."""
    with tarfile.open(tarball) as archive:
        members = {PurePosixPath(m.name).name: m for m in archive if m.isfile()}
        for batch_name in layout.batches[split]:
            if batch_name not in members:
                raise PreparationError(f"{tarball} has no {batch_name}: it is not {layout.tarball}.")
            batch = _NumpyOnlyUnpickler(archive.extractfile(members[batch_name]), encoding="bytes").load()
            height, width, channels = layout.image_shape  # the batch files store channel-major rows
            data = np.asarray(batch[b"data"], np.uint8).reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
            yield from zip(data, batch[layout.label_key], strict=True)


def _split_and_class(path: PurePosixPath, layout: Layout) -> tuple[str, str] | None:
    """("train" | "test", class folder) for a path .../<split>/<class>/<file>, else None."""
    if len(path.parts) < 3 or path.parts[-3] not in layout.batches or path.name.startswith("."):
        return None
    return path.parts[-3], path.parts[-2]


def _image_files(source: Path, layout: Layout) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(relative path, contents) of the .../<split>/<class>/<file> files of a directory or tarball; a class folder
    of a directory with no files is an error naming it."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            relative = PurePosixPath(path.relative_to(source).as_posix())
            if path.is_file() and _split_and_class(relative, layout):
                yield relative, path.read_bytes()
            elif path.is_dir() and _split_and_class(relative / "file", layout) and not any(path.iterdir()):
                raise PreparationError(f"{path} holds no images: copy its images, or remove the folder.")
        return
    with tarfile.open(source) as archive:
        for member in archive:
            if member.isfile() and _split_and_class(PurePosixPath(member.name), layout):
                yield PurePosixPath(member.name), archive.extractfile(member).read()


def _class_folder_files(source: Path, layout: Layout) -> dict[str, list[tuple[str, bytes]]]:
    """{split: [(id, encoded image)]} sorted by id, from a directory or tarball of class folders."""
    files = {split: [] for split in layout.batches}
    for path, contents in _image_files(source, layout):
        split, label_name = _split_and_class(path, layout)
        if label_name not in layout.labels:
            classes = ", ".join(layout.labels)
            raise PreparationError(
                f"{source}: folder {label_name!r} of {path} is not a class of {layout.dataset} ({classes}): rename "
                "or remove it."
            )
        files[split].append((f"{split}/{label_name}/{path.name}", contents))
    for split, examples in files.items():
        if not examples:
            raise PreparationError(
                f"{source} has no {split}/<class>/<image> files; expected a {layout.tarball} or "
                "class folders train/<class>/ and test/<class>/."
            )
        examples.sort()
    return files


def _decoded(image_bytes: bytes, name: str, shape: tuple[int, int, int]) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    except OSError as error:  # PIL's UnidentifiedImageError, truncated data
        raise PreparationError(f"{name} does not decode as an image ({error}); remove or replace it.") from error
    if (image.height, image.width, 3) != shape:
        raise PreparationError(f"{name} is {image.width}x{image.height}, not a {shape[1]}x{shape[0]} CIFAR image.")
    return image


class _FromFiles:
    """The part of the builders below that reads local files instead of the download."""

    layout: Layout
    code_path = None  # tfds would look for a checksums file beside this module; there is nothing to download.

    def __init__(self, *, source: str | os.PathLike, **kwargs):
        self._source = Path(source)
        super().__init__(**kwargs)

    def _python_tarball(self) -> Path | None:
        if self._source.is_dir():
            candidate = self._source / self.layout.tarball
            return candidate if candidate.exists() else None
        return self._source if self._source.name == self.layout.tarball else None

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        if not self._source.exists():
            raise PreparationError(f"{self.name} source {self._source} does not exist.")
        self.info.features["label"].names = list(self.layout.labels)
        if self.layout.coarse_labels:
            self.info.features["coarse_label"].names = list(self.layout.coarse_labels)
        tarball = self._python_tarball()
        if tarball is not None:
            return {split: self._from_python_tarball(tarball, split) for split in self.layout.batches}
        files = _class_folder_files(self._source, self.layout)
        return {split: self._from_class_folders(examples) for split, examples in files.items()}

    def _example(self, example_id: str, image: Image.Image, label: int) -> dict:
        example = {"id": example_id, "image": image, "label": int(label)}
        if self.layout.coarse_labels:
            example["coarse_label"] = self.layout.coarse_label(int(label))
        return example

    def _from_python_tarball(self, tarball: Path, split: str):
        for index, (image, label) in enumerate(python_batches(tarball, self.layout, split)):
            yield index, self._example(f"{split}_{index:05d}", Image.fromarray(image), label)

    def _from_class_folders(self, examples: list[tuple[str, bytes]]):
        for index, (example_id, image_bytes) in enumerate(examples):
            label = self.layout.labels.index(example_id.split("/")[1])
            yield index, self._example(example_id, _decoded(image_bytes, example_id, self.layout.image_shape), label)


class Cifar10FromFiles(_FromFiles, tfds.image_classification.Cifar10, skip_registration=True):
    """tfds' cifar10, generated from local files instead of the download."""

    name = "cifar10"
    layout = CIFAR10


class Cifar100FromFiles(_FromFiles, tfds.image_classification.Cifar100, skip_registration=True):
    """tfds' cifar100 (with its coarse labels), generated from local files instead of the download."""

    name = "cifar100"
    layout = CIFAR100
