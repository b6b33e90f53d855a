"""Training augmentation of the paper (docs/paper.md, "Training"), one example at a time.

Each view is a small picklable callable `view(record, rng) -> {"image": float32 [H, W, 3]}` (grain
ships it to its worker processes). `record` is a tfds example whose "image" is still encoded, so
the view can decode no more pixels than it keeps; `rng` is derived from (seed, epoch, index) by
the pipeline, which makes every example's augmentation reproducible and resumable.

Pixels are RGB / 255 minus the per-pixel training mean: the paper subtracts the mean and does
not divide by a standard deviation. The AlexNet PCA constants are for this [0, 1] scale.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from resnet_jax.data import datasets, images

IMAGENET_CROP = datasets.get("imagenet2012").image_shape[0]  # the training and test crop
IMAGENET_SCALES = (256, 480)  # shorter side drawn uniformly from this closed range (Section 3.4)
CIFAR_PAD = 4

# AlexNet PCA lighting (as in fb.resnet.torch, on [0, 1] RGB): the columns of EIGVEC are the
# eigenvectors of the RGB pixel covariance, EIGVAL their eigenvalues.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
    np.float32,
)


def pca_lighting(rng: np.random.Generator, alphastd: float) -> np.ndarray:
    """The RGB offset added to every pixel of one image: EIGVEC @ (alpha * EIGVAL), alpha ~ N(0, alphastd^2)."""
    alpha = rng.normal(0.0, alphastd, size=3).astype(np.float32)
    return PCA_EIGVEC @ (alpha * PCA_EIGVAL)


@dataclasses.dataclass(frozen=True)
class ScaleCrop:
    """Resize the shorter side to `scale`, then keep the `size` x `size` window at (top, left)."""

    scale: int
    top: int
    left: int
    size: int = IMAGENET_CROP

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the whole image after the shorter side is resized to `scale`."""
        if height <= width:
            return self.scale, max(self.scale, round(width * self.scale / height))
        return max(self.scale, round(height * self.scale / width)), self.scale

    def source_box(self, height: int, width: int) -> images.Box:
        """The window in the original image's pixels."""
        resized_h, resized_w = self.resized_shape(height, width)
        sy, sx = height / resized_h, width / resized_w
        return (
            self.left * sx,
            self.top * sy,
            (self.left + self.size) * sx,
            (self.top + self.size) * sy,
        )


def sample_scale_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    scales: tuple[int, int] = IMAGENET_SCALES,
    size: int = IMAGENET_CROP,
) -> ScaleCrop:
    """The paper's scale augmentation: scale ~ U{scales[0]..scales[1]}, window uniform over positions."""
    scale = int(rng.integers(scales[0], scales[1] + 1))
    resized_h, resized_w = ScaleCrop(scale, 0, 0, size).resized_shape(height, width)
    top = int(rng.integers(0, resized_h - size + 1))
    left = int(rng.integers(0, resized_w - size + 1))
    return ScaleCrop(scale, top, left, size)


def sample_inception_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
) -> images.Box:
    """Inception-style random-resized crop (not the paper's): a window of random area and aspect."""
    area = height * width
    log_aspect = (math.log(aspect_range[0]), math.log(aspect_range[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(*log_aspect))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return (left, top, left + w, top + h)
    # Fallback, as torchvision: the central crop with the aspect clamped into range.
    aspect = min(max(width / height, aspect_range[0]), aspect_range[1])
    w, h = (width, round(width / aspect)) if width / height <= aspect else (round(height * aspect), height)
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h)


def normalize(pixels: np.ndarray, mean_image: np.ndarray, std: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB -> float32 RGB / 255 minus the mean (the paper's per-pixel mean), divided by a per-channel standard
    deviation if one is given (a named option: `data.normalization='per_channel'`). NumPy or jax arrays alike."""
    centred = pixels.astype(np.float32) * np.float32(1 / 255) - mean_image
    return centred if std is None else centred / std


@dataclasses.dataclass(frozen=True, eq=False)
class ImageNetTrainView:
    """The host's share of the ImageNet training view: decode, scale augmentation (or Inception crop), random flip,
    and the draw of the PCA lighting offset.

    It returns the crop as uint8 pixels (already mirrored when the flip was drawn), the flip and the lighting offset;
    `finish_imagenet_batch` subtracts the mean and adds the offset inside the jitted step. That keeps the float
    arithmetic, and three quarters of the bytes, out of the input workers, their shared memory and the copies to
    the devices (benchmarks/RESULTS.md). The result is the same image as subtracting on the host would give.
    """

    crop: str = "paper"  # "paper" | "inception"
    alphastd: float = 0.1  # PCA lighting strength; 0 disables it
    finished_on_device = True  # its batches go through `finish_imagenet_batch` in the step

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        data = record["image"]
        height, width = images.jpeg_shape(data)
        if self.crop == "paper":
            box = sample_scale_crop(rng, height, width).source_box(height, width)
        else:
            box = sample_inception_box(rng, height, width)
        pixels = images.decode_region(data, box, (IMAGENET_CROP, IMAGENET_CROP))
        flip = rng.random() < 0.5
        lighting = pca_lighting(rng, self.alphastd) if self.alphastd else np.zeros(3, np.float32)
        return {"image": images.mirror(pixels) if flip else pixels, "flip": np.bool_(flip), "lighting": lighting}


def finish_imagenet_batch(batch: dict, mean_image, std=None) -> dict:
    """The device's share of the ImageNet training view, on a batch of `ImageNetTrainView` outputs: float32 RGB / 255
    minus the per-pixel mean (mirrored for mirrored crops: flip(pixels) - flip(mean), as Caffe does), plus the PCA
    lighting offset. Traced into the train step; also callable on NumPy batches (returns jax arrays)."""
    import jax.numpy as jnp

    flip = jnp.asarray(batch["flip"])[:, None, None, None]
    means = jnp.where(flip, jnp.asarray(mean_image)[:, ::-1], jnp.asarray(mean_image))
    image = normalize(jnp.asarray(batch["image"]), means, std) + jnp.asarray(batch["lighting"])[:, None, None, :]
    return {k: v for k, v in batch.items() if k not in ("flip", "lighting")} | {"image": image}


@dataclasses.dataclass(frozen=True, eq=False)
class CifarTrainView:
    """Mean subtraction, 4-pixel padding, random 32x32 crop, random flip (Section 4.2).

    The padding is added after the mean is subtracted and is 0 there, so padded pixels are the mean colour; with
    `pad_value` (the normalised value of another colour, per channel) they are that colour instead.
    """

    mean_image: np.ndarray  # float32 [32, 32, 3]
    std: np.ndarray | None = None
    pad_value: np.ndarray | float = 0.0
    finished_on_device = False  # its batches are the finished float views

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        pixels = images.decode_png(record["image"])
        size = pixels.shape[0]
        padded = np.zeros((size + 2 * CIFAR_PAD, size + 2 * CIFAR_PAD, 3), np.float32) + self.pad_value
        padded[CIFAR_PAD:-CIFAR_PAD, CIFAR_PAD:-CIFAR_PAD] = normalize(pixels, self.mean_image, self.std)
        top, left = rng.integers(0, 2 * CIFAR_PAD + 1, size=2)
        image = padded[top : top + size, left : left + size]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image)}
