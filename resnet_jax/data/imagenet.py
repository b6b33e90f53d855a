"""ILSVRC-2012 from class folders, written as the tfds `imagenet2012` dataset (same name, version,
features, label order: synsets sorted by wnid).

Layout: `<source>/train/<wnid>/*.JPEG` and `<source>/val/<wnid>/*.JPEG` (or `validation/`), the
layout of most ImageNet mirrors and of torchvision's ImageFolder. Files are stored as they are,
except the few that are not plain RGB/greyscale JPEGs (ILSVRC-2012 has 22 CMYK JPEGs and one PNG
under a .JPEG name), which are re-encoded as RGB JPEG -- the same repair tfds' own builder
makes. Building needs PIL and simplejpeg only (no TensorFlow).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import simplejpeg
from PIL import Image
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder

from resnet_jax.core.errors import PreparationError
from resnet_jax.core.progress import Progress

SPLIT_FOLDERS = {"train": ("train",), "validation": ("val", "validation")}
_PLAIN_JPEG_COLORSPACES = ("RGB", "Gray", "YCbCr")


def _rgb_jpeg(path: Path) -> bytes:
    """The file's bytes if it is a plain JPEG, else the image re-encoded as an RGB JPEG."""
    data = path.read_bytes()
    try:
        if simplejpeg.decode_jpeg_header(data)[2] in _PLAIN_JPEG_COLORSPACES:
            return data
    except ValueError:
        pass  # not a JPEG at all: re-encode below
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except OSError as e:
        raise PreparationError(f"{path} is not a readable image; remove or replace it: {e}") from e
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=95)
    return encoded.getvalue()


class Imagenet2012FromFolders(imagenet2012_dataset_builder.Builder, skip_registration=True):
    """tfds' imagenet2012, generated from class folders instead of the ILSVRC tar files."""

    name = "imagenet2012"
    # tfds would look for a checksums file beside this module; there is nothing to download.
    code_path = None
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Class folders: <source>/train/<wnid>/*.JPEG, <source>/val/<wnid>/*.JPEG."

    def __init__(self, *, source: str | os.PathLike, **kwargs):
        self._source = Path(source)
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        splits = {}
        for split, folder_names in SPLIT_FOLDERS.items():
            folders = [self._source / f for f in folder_names if (self._source / f).is_dir()]
            if folders:
                splits[split] = self._generate_examples_from(folders[0])
        if "train" not in splits:
            raise PreparationError(f"{self._source} has no train/<wnid>/ class folders.")
        return splits

    def _generate_examples_from(self, folder: Path):
        wnids = set(self.info.features["label"].names)
        class_folders = sorted(p for p in folder.iterdir() if p.is_dir())
        # Hours for the 1.28M training images: a progress line every 10 s (tfds' own bar shows with --verbosity=1).
        progress = Progress(f"Preparing imagenet2012 from {folder}", len(class_folders), unit="class folders")
        for done, class_folder in enumerate(class_folders):
            progress.step(done)
            if class_folder.name not in wnids:
                raise PreparationError(
                    f"{class_folder} is not named after an ILSVRC-2012 synset (e.g. n01440764): rename or remove it."
                )
            files = sorted(p for p in class_folder.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise PreparationError(f"{class_folder} holds no images: copy its images, or remove the folder.")
            for path in files:
                yield (
                    f"{folder.name}/{class_folder.name}/{path.name}",
                    {
                        "image": _rgb_jpeg(path),
                        "label": class_folder.name,
                        "file_name": path.name,
                    },
                )
