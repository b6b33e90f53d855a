"""Test-time views of PAPER.md, and the evaluation batch formats they make.

Every evaluation batch has, for its b = global_batch_size // process_count local examples:
  "label": int32 [b] (-1 for padding), "mask": bool [b] (False for padding and for records
  skipped as corrupt: count an example only where mask is True), "index": int32 [b] (the record's
  position in the split, -1 for padding), and the views:

  protocol "single" (CIFAR) and "1crop": "image" float32 [b, 1, H, W, 3].
  protocol "10crop": "image" float32 [b, 10, 224, 224, 3], views in the order
      top-left, top-right, bottom-left, bottom-right, centre, then the same five mirrored;
      average the 10 softmax scores.
  protocol "multiscale": for each shorter side s in MULTISCALE_SIDES (224, 256, 384, 480, 640):
      "image_<s>" float32 [b, L, L, 3] and "valid_<s>" bool [b, L, L], with L = canvas_size(s)
      (448, 512, 768, 960, 1280): the image resized to shorter side s sits in the top-left
      corner of a zero canvas, and valid marks its pixels. Run the network fully
      convolutionally (the 1000-way fc applied at every position of the last feature map),
      keep the positions (i, j) where valid[:, STRIDE * i, STRIDE * j] is True -- exactly the
      ceil(h / 32) x ceil(w / 32) positions a fully-convolutional pass over the h x w image
      itself has -- average their softmax scores, then average over the five scales.
      Images whose longer side exceeds MAX_ASPECT times the shorter are centre-cropped to that
      aspect first (about 1.4% of ImageNet images), so one canvas fits either orientation.

All views subtract the per-pixel mean of the training set (see mean_image.py): the 224x224
mean itself from every 224 crop (the same for every crop position, as in training), and the
mean resized to the image for the multi-scale views.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from resnet_jax.data import images
from resnet_jax.data.transforms import IMAGENET_CROP, ScaleCrop, normalize

ONE_CROP_SIDE = 256
MULTISCALE_SIDES = (224, 256, 384, 480, 640)
MAX_ASPECT = 2.0
STRIDE = 32  # total stride of the ResNets: one score-map position per STRIDE x STRIDE pixels


def canvas_size(side: int) -> int:
    """Canvas edge for shorter side `side`: room for MAX_ASPECT * side, a multiple of STRIDE."""
    return STRIDE * math.ceil(side * MAX_ASPECT / STRIDE)


def centre_crop(height: int, width: int, side: int = ONE_CROP_SIDE) -> ScaleCrop:
    """The central 224 window after the shorter side is resized to `side`."""
    resized_h, resized_w = ScaleCrop(side, 0, 0).resized_shape(height, width)
    return ScaleCrop(side, (resized_h - IMAGENET_CROP) // 2, (resized_w - IMAGENET_CROP) // 2)


def one_crop_pixels(data: bytes) -> np.ndarray:
    """uint8 [224, 224, 3]: shorter side 256, centre crop (also the geometry of the mean image)."""
    height, width = images.jpeg_shape(data)
    box = centre_crop(height, width).source_box(height, width)
    return images.decode_region(data, box, (IMAGENET_CROP, IMAGENET_CROP))


@dataclasses.dataclass(frozen=True, eq=False)
class CifarSingleView:
    """The 32x32 test image itself."""

    mean_image: np.ndarray  # float32 [32, 32, 3]

    def __call__(self, record: dict) -> dict:
        return {"image": normalize(images.decode_png(record["image"]), self.mean_image)[None]}

    def empty(self) -> dict:
        return {"image": np.zeros((1, *self.mean_image.shape), np.float32)}


@dataclasses.dataclass(frozen=True, eq=False)
class OneCropView:
    """Shorter side 256, centre 224 crop."""

    mean_image: np.ndarray  # float32 [224, 224, 3]

    def __call__(self, record: dict) -> dict:
        return {"image": normalize(one_crop_pixels(record["image"]), self.mean_image)[None]}

    def empty(self) -> dict:
        return {"image": np.zeros((1, IMAGENET_CROP, IMAGENET_CROP, 3), np.float32)}


@dataclasses.dataclass(frozen=True, eq=False)
class TenCropView:
    """Shorter side 256; the four corner and the centre 224 crops, and their mirrors."""

    mean_image: np.ndarray  # float32 [224, 224, 3]

    def __call__(self, record: dict) -> dict:
        data = record["image"]
        height, width = images.jpeg_shape(data)
        resized_h, resized_w = ScaleCrop(ONE_CROP_SIDE, 0, 0).resized_shape(height, width)
        pixels = images.decode_region(data, None, (resized_w, resized_h))
        bottom, right, size = resized_h - IMAGENET_CROP, resized_w - IMAGENET_CROP, IMAGENET_CROP
        corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
        crops = [pixels[top : top + size, left : left + size] for top, left in corners]
        mirrored_mean = self.mean_image[:, ::-1]
        views = [normalize(c, self.mean_image) for c in crops]
        views += [normalize(images.mirror(c), mirrored_mean) for c in crops]
        return {"image": np.stack(views)}

    def empty(self) -> dict:
        return {"image": np.zeros((10, IMAGENET_CROP, IMAGENET_CROP, 3), np.float32)}


@dataclasses.dataclass(frozen=True, eq=False)
class MultiScaleView:
    """The whole image at each shorter side of MULTISCALE_SIDES, on fixed canvases (see above)."""

    mean_image: np.ndarray  # float32 [224, 224, 3]

    def __call__(self, record: dict) -> dict:
        data = record["image"]
        height, width = images.jpeg_shape(data)
        largest = max(MULTISCALE_SIDES)
        finest = largest / min(height, width)
        decoded = images.decode_jpeg(data, math.ceil(height * finest), math.ceil(width * finest))
        example = {}
        for side in MULTISCALE_SIDES:
            resized_h, resized_w = ScaleCrop(side, 0, 0).resized_shape(height, width)
            kept_h = min(resized_h, int(side * MAX_ASPECT))
            kept_w = min(resized_w, int(side * MAX_ASPECT))
            sy, sx = decoded.shape[0] / resized_h, decoded.shape[1] / resized_w
            top, left = (resized_h - kept_h) // 2, (resized_w - kept_w) // 2
            box = (left * sx, top * sy, (left + kept_w) * sx, (top + kept_h) * sy)
            pixels = images.resize_region(decoded, box, (kept_w, kept_h))
            mean = cv2.resize(self.mean_image, (kept_w, kept_h), interpolation=cv2.INTER_LINEAR)
            canvas = np.zeros((canvas_size(side), canvas_size(side), 3), np.float32)
            valid = np.zeros(canvas.shape[:2], bool)
            canvas[:kept_h, :kept_w] = normalize(pixels, mean)
            valid[:kept_h, :kept_w] = True
            example[f"image_{side}"] = canvas
            example[f"valid_{side}"] = valid
        return example

    def empty(self) -> dict:
        example = {}
        for side in MULTISCALE_SIDES:
            example[f"image_{side}"] = np.zeros((canvas_size(side), canvas_size(side), 3), np.float32)
            example[f"valid_{side}"] = np.zeros((canvas_size(side), canvas_size(side)), bool)
        return example


VIEWS = {"single": CifarSingleView, "1crop": OneCropView, "10crop": TenCropView, "multiscale": MultiScaleView}
"""Every test protocol by name (which apply to a dataset: `resnet_jax.datasets`)."""
