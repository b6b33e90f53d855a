"""Test-time views of the paper (docs/paper.md, "Testing"), and the evaluation batch formats they make.

Every evaluation batch has, for its b = global_batch_size // process_count local examples:
  "label": int32 [b] (-1 for padding), "mask": bool [b] (False for padding and for records
  skipped as corrupt: count an example only where mask is True), "index": int32 [b] (the record's
  position in the split, -1 for padding), and the views:

  protocol "single" (CIFAR) and "1crop": "image" float32 [b, 1, H, W, 3].
  protocol "10crop": "image" float32 [b, 10, 224, 224, 3], views in the order
      top-left, top-right, bottom-left, bottom-right, centre, then the same five mirrored;
      average the 10 softmax scores.
  protocol "multiscale" (Table 4): for each shorter side s in MULTISCALE_SIDES (224, 256, 384, 480,
      640), "image_<s>" float32 [b, H, W, 3] and "valid_<s>" bool [b, H, W]: the whole image resized
      to shorter side s (the other side by its aspect ratio) in the top-left corner of a canvas just
      large enough for its aspect bucket, and the mask of its pixels. A batch holds images of one
      bucket (`bucket_of`: orientation and aspect ratio, at most NUM_BUCKETS of them), so at most
      NUM_BUCKETS shapes are ever compiled, and the canvases waste little. `models.ResNet` with
      `score_map=True, valid=...` computes the fully-convolutional class-score map of each image as
      if it ran on the image alone; the evaluation averages the scores over its positions, takes
      the softmax, and averages it over the five scales and the image's mirror (VGG's dense
      evaluation, which the paper adopts). Images whose longer side exceeds MAX_ASPECT times the
      shorter are centre-cropped to that aspect first (about 1.4% of ImageNet images).

All views subtract the per-pixel mean of the training set (see mean_image.py): the 224x224
mean itself from every 224 crop (the same for every crop position, as in training), and the
mean resized to the image for the multi-scale views. With `data.normalization='per_channel'` (a
named option for other recipes) the mean is a constant colour and views also divide by `std`.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from resnet_jax.data import datasets, images
from resnet_jax.data.transforms import IMAGENET_CROP, ScaleCrop, normalize

STRIDE = datasets.get("imagenet2012").score_map_stride

ONE_CROP_SIDE = 256
MULTISCALE_SIDES = (224, 256, 384, 480, 640)
MAX_ASPECT = 2.0
# Upper aspect ratios (longer over shorter side) of the canvas buckets, around ImageNet's common 1:1, 5:4, 4:3, 3:2
# and 16:9. Landscape and portrait images have buckets of their own; a square image is landscape.
ASPECT_BUCKETS = (1.0, 1.25, 4 / 3 + 1e-3, 1.5, 16 / 9, MAX_ASPECT)
NUM_BUCKETS = 2 * len(ASPECT_BUCKETS)


def bucket_of(height: int, width: int) -> int:
    """The canvas bucket of an image: its orientation and the first aspect bound it fits under."""
    longer, shorter = max(height, width), min(height, width)
    aspect = min(longer / shorter, MAX_ASPECT)
    k = next(i for i, bound in enumerate(ASPECT_BUCKETS) if aspect <= bound + 1e-9)
    return k + (len(ASPECT_BUCKETS) if height > width else 0)


def canvas_shape(bucket: int, side: int) -> tuple[int, int]:
    """(height, width) of bucket `bucket`'s canvas at shorter side `side`: room for the bucket's widest image resized
    (sides are rounded to whole pixels), in multiples of STRIDE."""
    longer = STRIDE * math.ceil((side * ASPECT_BUCKETS[bucket % len(ASPECT_BUCKETS)] + 0.5) / STRIDE)
    shorter = STRIDE * math.ceil(side / STRIDE)
    return (longer, shorter) if bucket >= len(ASPECT_BUCKETS) else (shorter, longer)


def centre_crop(height: int, width: int, side: int = ONE_CROP_SIDE) -> ScaleCrop:
    """The central 224 window after the shorter side is resized to `side`."""
    resized_h, resized_w = ScaleCrop(side, 0, 0).resized_shape(height, width)
    return ScaleCrop(side, (resized_h - IMAGENET_CROP) // 2, (resized_w - IMAGENET_CROP) // 2)


def one_crop_pixels(data: bytes, side: int = ONE_CROP_SIDE) -> np.ndarray:
    """uint8 [224, 224, 3]: shorter side `side` (256: the paper's, also the geometry of the mean image), centre
    crop."""
    height, width = images.jpeg_shape(data)
    box = centre_crop(height, width, side).source_box(height, width)
    return images.decode_region(data, box, (IMAGENET_CROP, IMAGENET_CROP))


@dataclasses.dataclass(frozen=True, eq=False)
class _View:
    """A test view: `view(record)` gives one example's views, normalised; `empty(bucket)` a padding example."""

    mean_image: np.ndarray  # float32: [32, 32, 3] for CIFAR; for ImageNet [224, 224, 3], the 1-crop view's mean
    std: np.ndarray | None = None
    side: int = ONE_CROP_SIDE  # the 1-crop view's shorter side (data.one_crop_side)


class CifarSingleView(_View):
    """The 32x32 test image itself."""

    def __call__(self, record: dict) -> dict:
        return {"image": normalize(images.decode_png(record["image"]), self.mean_image, self.std)[None]}

    def empty(self, bucket: int = 0) -> dict:
        return {"image": np.zeros((1, *self.mean_image.shape), np.float32)}


class OneCropView(_View):
    """Shorter side `side` (the paper's 256), centre 224 crop."""

    def __call__(self, record: dict) -> dict:
        return {"image": normalize(one_crop_pixels(record["image"], self.side), self.mean_image, self.std)[None]}

    def empty(self, bucket: int = 0) -> dict:
        return {"image": np.zeros((1, IMAGENET_CROP, IMAGENET_CROP, 3), np.float32)}


class TenCropView(_View):
    """Shorter side 256; the four corner and the centre 224 crops, and their mirrors."""

    def __call__(self, record: dict) -> dict:
        data = record["image"]
        height, width = images.jpeg_shape(data)
        resized_h, resized_w = ScaleCrop(ONE_CROP_SIDE, 0, 0).resized_shape(height, width)
        pixels = images.decode_region(data, None, (resized_w, resized_h))
        bottom, right, size = resized_h - IMAGENET_CROP, resized_w - IMAGENET_CROP, IMAGENET_CROP
        corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
        crops = [pixels[top : top + size, left : left + size] for top, left in corners]
        mirrored_mean = self.mean_image[:, ::-1]
        views = [normalize(c, self.mean_image, self.std) for c in crops]
        views += [normalize(images.mirror(c), mirrored_mean, self.std) for c in crops]
        return {"image": np.stack(views)}

    def empty(self, bucket: int = 0) -> dict:
        return {"image": np.zeros((10, IMAGENET_CROP, IMAGENET_CROP, 3), np.float32)}


class MultiScaleView(_View):
    """The whole image at each shorter side of MULTISCALE_SIDES, on its bucket's canvases (see above)."""

    def __call__(self, record: dict) -> dict:
        data = record["image"]
        height, width = images.jpeg_shape(data)
        bucket = bucket_of(height, width)
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
            canvas = np.zeros((*canvas_shape(bucket, side), 3), np.float32)
            valid = np.zeros(canvas.shape[:2], bool)
            canvas[:kept_h, :kept_w] = normalize(pixels, mean, self.std)
            valid[:kept_h, :kept_w] = True
            example[f"image_{side}"] = canvas
            example[f"valid_{side}"] = valid
        return example

    def empty(self, bucket: int = 0) -> dict:
        example = {}
        for side in MULTISCALE_SIDES:
            example[f"image_{side}"] = np.zeros((*canvas_shape(bucket, side), 3), np.float32)
            example[f"valid_{side}"] = np.zeros(canvas_shape(bucket, side), bool)
        return example


VIEWS = {"single": CifarSingleView, "1crop": OneCropView, "10crop": TenCropView, "multiscale": MultiScaleView}
"""Every test protocol by name (which apply to a dataset: `resnet_jax.datasets`)."""


def bucketed(protocol: str) -> bool:
    """Whether a protocol's batches hold one canvas bucket each (so the examples must be ordered by bucket)."""
    return protocol == "multiscale"
