"""Training augmentation against the paper (docs/paper.md), on the real images of ../shared/data."""

import io

import numpy as np
import pytest
import scipy.stats
from PIL import Image

from resnet_jax.data import images, transforms
from resnet_jax.data.pipeline import train_iterator
from tests.support.data import IMAGENET_SAMPLES, imagenet_sample_rows, opened


def _blocks(pixels):
    """8x8 block means: insensitive to the resampling kernel, sensitive to the crop's scale and position."""
    h, w = pixels.shape[:2]
    return pixels.reshape(h // 8, 8, w // 8, 8, 3).astype(np.float64).mean((1, 3))


def _reference_crop(image: Image.Image, crop: transforms.ScaleCrop) -> np.ndarray:
    """A straightforward PIL version: resize the whole image, then crop."""
    resized_h, resized_w = crop.resized_shape(image.height, image.width)
    resized = image.resize((resized_w, resized_h), Image.BILINEAR)
    return np.asarray(resized.crop((crop.left, crop.top, crop.left + crop.size, crop.top + crop.size)))


def _sample_jpegs(count):
    if not IMAGENET_SAMPLES.exists():
        pytest.skip(f"{IMAGENET_SAMPLES} is absent")
    rows = imagenet_sample_rows()
    return [
        (IMAGENET_SAMPLES / "images" / rows[i]["filename"]).read_bytes()
        for i in np.linspace(0, len(rows) - 1, count).astype(int)
    ]


def test_scale_sampler_is_uniform_on_256_to_480():
    rng = np.random.default_rng(0)
    crops = [transforms.sample_scale_crop(rng, 375, 500) for _ in range(30_000)]
    scales = np.array([c.scale for c in crops])
    assert scales.min() == 256 and scales.max() == 480
    counts = np.bincount(scales - 256, minlength=225)
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    for crop in crops[:2000]:
        resized_h, resized_w = crop.resized_shape(375, 500)
        assert resized_h == crop.scale and 0 <= crop.top <= resized_h - 224 and 0 <= crop.left <= resized_w - 224


def test_crops_are_taken_at_the_drawn_scale_and_position():
    rng = np.random.default_rng(1)
    for data_bytes in _sample_jpegs(150):
        height, width = images.jpeg_shape(data_bytes)
        crop = transforms.sample_scale_crop(rng, height, width)
        ours = _blocks(images.decode_region(data_bytes, crop.source_box(height, width), (224, 224)))
        image = Image.open(io.BytesIO(data_bytes)).convert("RGB")
        distance = {}
        for delta in (-24, -12, 0, 12, 24):
            other = transforms.ScaleCrop(crop.scale + delta, crop.top, crop.left)
            resized_h, resized_w = other.resized_shape(height, width)
            if resized_h >= crop.top + 224 and resized_w >= crop.left + 224:
                distance[delta] = np.abs(ours - _blocks(_reference_crop(image, other))).mean()
        assert distance[0] < 4, distance  # grey levels, after 8x8 averaging
        assert min(distance, key=distance.get) == 0, distance


def test_imagenet_train_pipeline_follows_the_scale_law_with_flips_and_pca_lighting(imagenet_samples_data_dir):
    dataset, cfg = opened("imagenet2012", imagenet_samples_data_dir)
    source = dataset.source("train")
    mean = dataset.mean_image
    iterator = train_iterator(dataset, cfg, global_batch_size=32, seed=7)
    scales, flips = [], []
    for _ in range(4):  # 128 of the 1000 examples: all from epoch 0
        batch = next(iterator)
        assert batch["image"].shape == (32, 224, 224, 3) and batch["image"].dtype == np.uint8  # finished on devices
        finished = np.asarray(transforms.finish_imagenet_batch(batch, mean)["image"])
        assert finished.dtype == np.float32
        for image, label, index, flipped in zip(finished, batch["label"], batch["index"], batch["flip"], strict=True):
            record = source[int(index)]
            assert label == record["label"]
            # Replay the example's draws: its generator is seeded by (seed, epoch, index).
            rng = np.random.default_rng((7, 0, int(index)))
            height, width = images.jpeg_shape(record["image"])
            crop = transforms.sample_scale_crop(rng, height, width)
            flip = rng.random() < 0.5
            lighting = transforms.pca_lighting(rng, 0.1)
            assert flipped == flip
            reference = _reference_crop(Image.open(io.BytesIO(record["image"])).convert("RGB"), crop)
            expected = reference[:, ::-1] - 255 * mean[:, ::-1] if flip else reference - 255 * mean
            observed = 255 * (image - lighting)
            assert np.abs(_blocks(observed) - _blocks(expected)).mean() < 4
            scales.append(crop.scale)
            flips.append(flip)
    assert min(scales) >= 256 and max(scales) <= 480
    assert scipy.stats.kstest(scales, scipy.stats.uniform(256, 480 - 256).cdf).pvalue > 1e-3
    assert 0.3 < np.mean(flips) < 0.7


def test_finishing_on_the_devices_equals_subtracting_on_the_host():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 224, 224, 3), np.uint8)
    mean = rng.uniform(0.3, 0.6, (224, 224, 3)).astype(np.float32)
    flips = np.array([True, False, True, False])
    lighting = np.stack([transforms.pca_lighting(rng, 0.1) for _ in range(4)])
    batch = {"image": pixels, "flip": flips, "lighting": lighting, "label": np.arange(4)}
    finished = transforms.finish_imagenet_batch(batch, mean)
    assert set(finished) == {"image", "label"}
    for i in range(4):
        host = transforms.normalize(pixels[i], mean[:, ::-1] if flips[i] else mean) + lighting[i]
        np.testing.assert_allclose(np.asarray(finished["image"][i]), host, atol=1e-6)


# AlexNet's PCA of ImageNet's RGB pixels on [0, 1], typed from fb.resnet.torch (datasets/imagenet.lua, `pca`), the
# constants every PyTorch port copies: independent of the code under test.
ALEXNET_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
ALEXNET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def test_pca_lighting_has_the_alexnet_covariance():
    """fb.resnet.torch's Lighting: rgb = eigvec @ (alpha * eigval), alpha ~ N(0, 0.1^2) per component, so the
    offsets' covariance is eigvec diag((0.1 eigval)^2) eigvec^T."""
    rng = np.random.default_rng(0)
    offsets = np.stack([transforms.pca_lighting(rng, 0.1) for _ in range(100_000)])
    v, eigval = ALEXNET_EIGVEC, ALEXNET_EIGVAL
    expected = v @ np.diag((0.1 * eigval) ** 2) @ v.T
    np.testing.assert_allclose(offsets.mean(0), 0, atol=3e-4)
    np.testing.assert_allclose(np.cov(offsets.T), expected, rtol=0.03, atol=2e-7)
    # The noise lies mostly along the first (luminance-like) eigenvector.
    projections = offsets @ v
    np.testing.assert_allclose(projections.std(0), 0.1 * eigval, rtol=0.02)


def test_inception_crops_have_the_documented_area_and_aspect():
    """Every box lies in the image with area in [8%, 100%] and aspect in [3/4, 4/3] (or is the fallback); and for an
    ordinary image the boxes are drawn, not the fallback: their areas spread over the whole range and their log
    aspects centre on 0."""
    rng = np.random.default_rng(0)
    for height, width in [(375, 500), (500, 333), (100, 1000)]:
        areas, log_aspects, fallbacks = [], [], 0
        for _ in range(2000):
            left, top, right, bottom = transforms.sample_inception_box(rng, height, width)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            area = (right - left) * (bottom - top) / (height * width)
            aspect = (right - left) / (bottom - top)
            fallback = top == (height - (bottom - top)) // 2 and left == (width - (right - left)) // 2
            assert fallback or (0.07 < area <= 1.0 and 0.7 < aspect < 1.4)
            fallbacks += fallback and area > 0.5  # a drawn box is rarely both centred and large
            areas.append(area)
            log_aspects.append(np.log(aspect))
        if (height, width) != (100, 1000):  # 1:10: a large square-ish box rarely fits, the fallback is common
            assert fallbacks < 0.02 * len(areas)
            assert min(areas) < 0.1 and max(areas) > 0.8 and 0.35 < np.median(areas) < 0.6  # 2:3 fits at most 89%
            assert abs(np.mean(log_aspects)) < 0.06 and min(log_aspects) < -0.25 and max(log_aspects) > 0.25


def test_cifar_train_view_is_a_flipped_window_of_the_padded_mean_subtracted_image(cifar10_data_dir):
    dataset, _ = opened("cifar10", cifar10_data_dir)
    mean = dataset.mean_image
    view = transforms.CifarTrainView(mean)
    source = dataset.source("train")
    offsets, flips = set(), []
    for index in range(200):
        record = source[index]
        image = view(record, np.random.default_rng((3, 0, index)))["image"]
        rng = np.random.default_rng((3, 0, index))
        top, left = rng.integers(0, 9, size=2)
        flip = rng.random() < 0.5
        padded = np.pad(images.decode_png(record["image"]) / np.float32(255) - mean, ((4, 4), (4, 4), (0, 0)))
        expected = padded[top : top + 32, left : left + 32]
        np.testing.assert_allclose(image, expected[:, ::-1] if flip else expected, atol=1e-6)
        offsets.add((int(top), int(left)))
        flips.append(flip)
    assert len(offsets) > 60  # of the 81 windows
    assert 0.3 < np.mean(flips) < 0.7


@pytest.mark.parametrize("height, width", [(375, 500), (500, 375), (333, 500), (300, 300), (1000, 101), (481, 640)])
def test_the_shorter_side_becomes_the_scale_and_the_aspect_is_kept(height, width):
    for scale in (224, 256, 480):
        resized_h, resized_w = transforms.ScaleCrop(scale, 0, 0).resized_shape(height, width)
        assert min(resized_h, resized_w) == scale and (resized_h >= resized_w) == (height >= width)
        assert abs(max(resized_h, resized_w) - scale * max(height, width) / min(height, width)) <= 0.5


def test_every_window_position_is_drawn_at_the_drawn_scale():
    rng = np.random.default_rng(0)
    crops = [transforms.sample_scale_crop(rng, 256, 300, scales=(256, 256)) for _ in range(3000)]
    # resized to 256 x 300: tops 0..32, lefts 0..76, each reached
    assert {c.top for c in crops} == set(range(33)) and {c.left for c in crops} == set(range(77))


def test_an_inception_box_may_span_a_whole_side_but_never_exceed_it():
    rng = np.random.default_rng(0)
    # half of a 100 x 200 image as a square: 100 x 100, as tall as the image; drawn, so its position varies
    lefts = {transforms.sample_inception_box(rng, 100, 200, (0.5, 0.5), (1.0, 1.0))[0] for _ in range(200)}
    tops = {transforms.sample_inception_box(rng, 200, 100, (0.5, 0.5), (1.0, 1.0))[1] for _ in range(200)}
    assert len(lefts) > 20 and len(tops) > 20
    # a square of 9,920 pixels has sides of 99.6, rounded to 100: a pixel taller than a 99-pixel image, so never
    # drawn; the fallback (the central crop at the clamped aspect) is taken instead
    box = transforms.sample_inception_box(rng, 99, 200, (9920 / (99 * 200),) * 2, (1.0, 1.0))
    assert box == (50, 0, 149, 99)
    box = transforms.sample_inception_box(rng, 200, 99, (9920 / (99 * 200),) * 2, (1.0, 1.0))
    assert box == (0, 50, 99, 149)


@pytest.mark.parametrize(
    "height, width, box",
    [  # torchvision's RandomResizedCrop fallback (transforms.py, get_params), worked by hand: the aspect clamped into
        # [3/4, 4/3], the side that is too long cut to it, centred
        (100, 1000, (433, 0, 566, 100)),  # 10:1: h = 100, w = round(100 * 4/3) = 133, left (1000 - 133) // 2
        (1000, 100, (0, 433, 100, 566)),  # 1:10: w = 100, h = round(100 / (3/4)) = 133
        (300, 400, (0, 0, 400, 300)),  # 4:3 is in range: the whole image
        (301, 1000, (299, 0, 700, 301)),  # h = 301, w = round(401.33) = 401, left (1000 - 401) // 2 = 299
    ],
)
def test_the_inception_fallback_is_torchvisions_central_crop(height, width, box):
    never_fits = (2.0, 2.0)  # twice the image's area
    assert transforms.sample_inception_box(np.random.default_rng(0), height, width, never_fits) == box


def test_cifar_per_channel_normalisation_and_coloured_padding(cifar10_data_dir):
    dataset, _ = opened("cifar10", cifar10_data_dir)
    record = dataset.source("train")[0]
    mean = np.full((32, 32, 3), [0.49, 0.48, 0.45], np.float32)
    std = np.array([0.25, 0.24, 0.26], np.float32)
    pad = np.array([-2.0, 0.5, 1.5], np.float32)
    view = transforms.CifarTrainView(mean, std, pad)
    pixels = images.decode_png(record["image"]).astype(np.float64)
    padded = np.tile(pad, (40, 40, 1)).astype(np.float64)
    padded[4:36, 4:36] = (pixels / 255 - mean) / std
    for index in range(20):
        rng = np.random.default_rng((5, 0, index))
        top, left = rng.integers(0, 9, size=2)
        expected = padded[top : top + 32, left : left + 32]
        expected = expected[:, ::-1] if rng.random() < 0.5 else expected
        image = view(record, np.random.default_rng((5, 0, index)))["image"]
        np.testing.assert_allclose(image, expected, atol=1e-5)


def test_each_training_view_says_whether_the_step_finishes_its_images(cifar10_data_dir):
    """The feed passes the normalisation to the step only for views whose images come out as uint8 pixels."""
    dataset, _ = opened("cifar10", cifar10_data_dir)
    cifar = transforms.CifarTrainView(dataset.mean_image)
    assert cifar(dataset.source("train")[0], np.random.default_rng(0))["image"].dtype == np.float32
    assert cifar.finished_on_device is False
    jpeg = _sample_jpegs(1)[0]
    imagenet = transforms.ImageNetTrainView()
    assert imagenet({"image": jpeg}, np.random.default_rng(0))["image"].dtype == np.uint8
    assert imagenet.finished_on_device is True


def test_normalize_divides_by_the_standard_deviation_when_given():
    pixels = np.array([[[0, 128, 255]]], np.uint8)
    mean, std = np.array([0.5, 0.5, 0.5], np.float32), np.array([0.25, 0.5, 2.0], np.float32)
    expected = (np.array([0, 128, 255]) / 255 - 0.5) / np.array([0.25, 0.5, 2.0])
    np.testing.assert_allclose(transforms.normalize(pixels, mean, std)[0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(transforms.normalize(pixels, mean)[0, 0], np.array([0, 128, 255]) / 255 - 0.5, atol=1e-6)
