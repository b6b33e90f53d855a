"""Decoding and resizing: the hot path of every image view.

Decoding a JPEG costs more than everything else a view does, so a view never decodes more
pixels than it keeps: libjpeg-turbo (through simplejpeg) scales by 1/2, 1/4 or 1/8 inside the
inverse DCT, which is both cheaper than a full decode and an antialiased downscale. Only
power-of-two factors are used because libjpeg-turbo's other factors (7/8, 3/4, ...) decode
*slower* than full size. The rest of the way to the target size is an OpenCV resize of just the
region that is kept: bilinear (as the authors' Caffe pipeline resized, with OpenCV's default) when
enlarging or shrinking by less than 2x, which is what a power-of-two decode leaves; area
interpolation (antialiased) for larger reductions.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import simplejpeg

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels; right/bottom exclusive


class CorruptImageError(ValueError):
    """The encoded bytes are not a complete, decodable image."""


def use_one_thread() -> None:
    """Makes OpenCV run in the calling thread. Where worker processes or threads are the parallelism (grain's
    workers, the command lines), OpenCV's own thread pool would oversubscribe the cores and make per-core throughput
    figures meaningless; the entry points and grain's worker initialisation call this, importing does not."""
    cv2.setNumThreads(1)


def jpeg_shape(data: bytes) -> tuple[int, int]:
    """(height, width) read from the JPEG header, without decoding."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as e:
        raise CorruptImageError(f"not a readable JPEG header: {e}") from e
    return height, width


def decode_jpeg(data: bytes, min_height: int = 0, min_width: int = 0) -> np.ndarray:
    """RGB uint8 [h, w, 3], reduced by the largest power of two that keeps h >= min_height, w >= min_width.

    Decoding is strict: truncated or damaged data raises CorruptImageError instead of returning an
    image padded with grey.
    """
    height, width = jpeg_shape(data)
    factor = 1
    while (
        factor < 8 and math.ceil(height / (2 * factor)) >= min_height and math.ceil(width / (2 * factor)) >= min_width
    ):
        factor *= 2
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_height=math.ceil(height / factor),
            min_width=math.ceil(width / factor),
            strict=True,
        )
    except ValueError as e:
        raise CorruptImageError(f"JPEG data does not decode: {e}") from e


def decode_png(data: bytes) -> np.ndarray:
    """RGB uint8 [h, w, 3] from PNG (or any format OpenCV reads)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise CorruptImageError("image data does not decode")
    return image


def resize_region(image: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """The `box` of `image` resized to `size` = (width, height).

    Bilinear interpolation samples the exact box (a rounded box would be off by several output
    pixels when enlarging). Shrinking by 2x or more uses area interpolation, which rounds the box to
    whole pixels of `image`: at most half an output pixel. Bilinear shrinking is 2.5x faster than area
    interpolation, which matters because this runs for every training image (benchmarks/RESULTS.md).
    """
    left, top, right, bottom = box
    if right - left >= 2 * size[0] or bottom - top >= 2 * size[1]:
        left, top, right, bottom = (int(round(v)) for v in box)
        region = image[max(top, 0) : bottom, max(left, 0) : right]
        return cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    sx, sy = (right - left) / size[0], (bottom - top) / size[1]
    # Output pixel centre u + 0.5 samples the image at left + (u + 0.5) * sx (pixel centres at k + 0.5).
    to_source = np.array([[sx, 0, left + 0.5 * sx - 0.5], [0, sy, top + 0.5 * sy - 0.5]])
    return cv2.warpAffine(
        image, to_source, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def decode_region(data: bytes, box: Box | None, size: tuple[int, int]) -> np.ndarray:
    """The `box` (in full-resolution pixels; None = whole image) of a JPEG, resized to `size`."""
    height, width = jpeg_shape(data)
    if box is None:
        box = (0.0, 0.0, float(width), float(height))
    left, top, right, bottom = box
    # Decode just fine enough that the box still has at least `size` pixels.
    scale = max(size[0] / (right - left), size[1] / (bottom - top))
    image = decode_jpeg(data, math.ceil(height * scale), math.ceil(width * scale))
    sy, sx = image.shape[0] / height, image.shape[1] / width
    return resize_region(image, (left * sx, top * sy, right * sx, bottom * sy), size)


def mirror(image: np.ndarray) -> np.ndarray:
    """Left-right mirror image, contiguous (a negative-stride view would make later copies slow)."""
    return cv2.flip(image, 1)
