"""Test-time protocols (docs/paper.md): view geometry on real images, and every example counted exactly once."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import images, protocols
from resnet_jax.data.pipeline import eval_iterator
from resnet_jax.data.transforms import ScaleCrop
from tests.support.data import IMAGENET_SAMPLES, imagenet_sample_rows, opened


def _blocks(pixels):
    h, w = pixels.shape[:2]
    return pixels[: h // 8 * 8, : w // 8 * 8].reshape(h // 8, 8, w // 8, 8, 3).astype(np.float64).mean((1, 3))


@pytest.fixture(scope="module")
def sample_records():
    if not IMAGENET_SAMPLES.exists():
        pytest.skip(f"{IMAGENET_SAMPLES} is absent")
    rows = imagenet_sample_rows()
    # Every shape class: small, typical, large, very wide or tall (aspect > 2), greyscale.
    chosen = [r for r in rows if r["mode"] == "L"][:2]
    chosen += [rows[i] for i in np.linspace(0, 999, 16).astype(int)]
    sizes = [(int(r["width"]), int(r["height"])) for r in rows]
    chosen += [r for r, size in zip(rows, sizes, strict=True) if max(size) > 2 * min(size)][:3]
    return [{"image": (IMAGENET_SAMPLES / "images" / r["filename"]).read_bytes()} for r in chosen]


def _resized(record, side):
    image = Image.open(io.BytesIO(record["image"])).convert("RGB")
    height, width = ScaleCrop(side, 0, 0).resized_shape(image.height, image.width)
    return np.asarray(image.resize((width, height), Image.BILINEAR))


def test_ten_crops_are_the_corners_and_centre_of_the_256_image_and_their_mirrors(sample_records):
    mean = np.random.default_rng(0).uniform(0.3, 0.6, (224, 224, 3)).astype(np.float32)
    view = protocols.TenCropView(mean)
    for record in sample_records:
        views = view(record)["image"]
        assert views.shape == (10, 224, 224, 3) and views.dtype == np.float32
        pixels = 255 * (views[:5] + mean)
        mirrored = 255 * (views[5:] + mean[:, ::-1])
        np.testing.assert_allclose(mirrored, pixels[:, :, ::-1], atol=1e-3)
        resized = _resized(record, 256)
        height, width = resized.shape[:2]
        assert min(height, width) == 256
        b, r = height - 224, width - 224
        for crop, (top, left) in zip(pixels, [(0, 0), (0, r), (b, 0), (b, r), (b // 2, r // 2)], strict=True):
            expected = resized[top : top + 224, left : left + 224]
            assert np.abs(_blocks(crop) - _blocks(expected)).mean() < 3


def test_one_crop_is_the_centre_224_of_the_256_image(sample_records):
    mean = np.full((224, 224, 3), 0.5, np.float32)
    for record in sample_records:
        crop = 255 * (protocols.OneCropView(mean)(record)["image"][0] + mean)
        centre = 255 * (protocols.TenCropView(mean)(record)["image"][4] + mean)
        resized = _resized(record, 256)
        top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
        expected = resized[top : top + 224, left : left + 224]
        assert np.abs(_blocks(crop) - _blocks(expected)).mean() < 3
        assert np.abs(_blocks(crop) - _blocks(centre)).mean() < 2


def test_one_crop_at_another_side_is_the_centre_224_of_that_image(sample_records):
    """torchvision's V2 weights were measured at resize 232: `data.one_crop_side`, which their entry sets."""
    from resnet_jax import pretrained
    from resnet_jax.eval.published import data_config_of

    mean = np.full((224, 224, 3), 0.5, np.float32)
    for record in sample_records[:6]:
        crop = 255 * (protocols.OneCropView(mean, side=232)(record)["image"][0] + mean)
        resized = _resized(record, 232)
        top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
        assert np.abs(_blocks(crop) - _blocks(resized[top : top + 224, left : left + 224])).mean() < 3
    assert data_config_of(pretrained.parse("resnet50:torchvision_v2")).one_crop_side == 232
    assert data_config_of(pretrained.parse("resnet50:torchvision_v1")).one_crop_side == 256


def test_the_one_crop_side_of_the_data_config_reaches_the_view(imagenet_samples_data_dir):
    dataset, cfg = opened("imagenet2012", imagenet_samples_data_dir)
    first = {}
    for side in (256, 232):
        cfg.one_crop_side = side
        batches = eval_iterator(dataset, cfg, split="validation", protocol="1crop", global_batch_size=4)
        first[side] = next(iter(batches))["image"][0, 0]
        mean, std, _ = dataset.normalization(cfg)
        expected = protocols.OneCropView(mean, std, side=side)(dataset.source("validation")[0])["image"][0]
        np.testing.assert_allclose(first[side], expected, atol=1e-5)
    assert np.abs(first[256] - first[232]).mean() > 0.01


def test_multiscale_views_place_each_resized_image_on_its_buckets_canvas(sample_records):
    mean = np.full((224, 224, 3), 0.5, np.float32)
    view = protocols.MultiScaleView(mean)
    buckets = set()
    for record in sample_records[::3]:
        example = view(record)
        bucket = protocols.bucket_of(*images.jpeg_shape(record["image"]))
        buckets.add(bucket)
        for side in protocols.MULTISCALE_SIDES:
            image, valid = example[f"image_{side}"], example[f"valid_{side}"]
            assert image.shape[:2] == valid.shape == protocols.canvas_shape(bucket, side)
            assert all(n % 32 == 0 for n in valid.shape)
            height, width = valid.sum(0).max(), valid.sum(1).max()
            assert valid[:height, :width].all() and valid.sum() == height * width
            assert not image[~valid].any()
            resized = _resized(record, side)
            assert min(height, width) == side
            assert max(height, width) == min(max(resized.shape[:2]), int(side * protocols.MAX_ASPECT))
            # the canvas wastes at most the bucket's spread of aspect ratios and the rounding to 32 pixels
            assert valid.size <= height * width * 1.3 + 32 * max(valid.shape)
            if (height, width) == resized.shape[:2]:
                pixels = 255 * (image[:height, :width] + 0.5)
                assert np.abs(_blocks(pixels) - _blocks(resized)).mean() < 3
    assert len(buckets) >= 3  # several orientations and aspect ratios among the samples


def test_buckets_cover_every_aspect_and_orientation_once():
    assert protocols.bucket_of(375, 500) == protocols.bucket_of(300, 400) != protocols.bucket_of(500, 375)
    assert protocols.bucket_of(100, 100) == 0 and protocols.bucket_of(100, 1000) == protocols.bucket_of(100, 200)
    seen = {protocols.bucket_of(h, w) for h in range(100, 401, 7) for w in range(100, 401, 7)}
    assert seen == set(range(protocols.NUM_BUCKETS)) - {len(protocols.ASPECT_BUCKETS)}  # no "portrait square"


def _eval_indices(dataset, cfg, split, protocol, global_batch_size, process_count):
    """{process: [batch index arrays]} and the masked-in labels, for every process of a simulated job."""
    per_process, labels = {}, {}
    for process in range(process_count):
        batches = list(
            eval_iterator(
                dataset,
                cfg,
                split=split,
                protocol=protocol,
                global_batch_size=global_batch_size,
                process_index=process,
                process_count=process_count,
            )
        )
        per_process[process] = batches
        for batch in batches:
            assert len(batch["mask"]) == global_batch_size // process_count
            assert (batch["index"][~batch["mask"]] == -1).all() and (batch["label"][~batch["mask"]] == -1).all()
            kept = batch["mask"]
            labels.update(zip(batch["index"][kept].tolist(), batch["label"][kept].tolist(), strict=True))
    return per_process, labels


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_every_cifar_test_example_is_counted_exactly_once(cifar10_data_dir, process_count):
    dataset, cfg = opened("cifar10", cifar10_data_dir)
    global_batch_size = 384  # does not divide 10,000
    per_process, labels = _eval_indices(dataset, cfg, "test", "single", global_batch_size, process_count)
    counted = np.concatenate([b["index"][b["mask"]] for batches in per_process.values() for b in batches])
    assert sorted(counted.tolist()) == list(range(10_000))
    assert len({len(batches) for batches in per_process.values()}) == 1  # SPMD: same number of steps everywhere
    assert len(per_process[0]) == math.ceil(10_000 / global_batch_size)
    source = dataset.source("test")
    for index in range(0, 10_000, 97):
        assert labels[index] == source[index]["label"]
    batch = per_process[0][0]
    assert batch["image"].shape == (global_batch_size // process_count, 1, 32, 32, 3)


def test_global_eval_batches_are_in_record_order_across_processes(cifar10_data_dir):
    dataset, cfg = opened("cifar10", cifar10_data_dir)
    parts = [
        next(
            iter(
                eval_iterator(
                    dataset,
                    cfg,
                    split="test",
                    protocol="single",
                    global_batch_size=12,
                    process_index=p,
                    process_count=3,
                )
            )
        )
        for p in range(3)
    ]
    assert np.concatenate([p["index"] for p in parts]).tolist() == list(range(12))


def test_imagenet_evaluation_counts_each_example_once(imagenet_samples_data_dir):
    dataset, cfg = opened("imagenet2012", imagenet_samples_data_dir)
    per_process, _ = _eval_indices(dataset, cfg, "validation", "1crop", 96, 2)  # 1000 = 10 x 96 + 40
    counted = np.concatenate([b["index"][b["mask"]] for batches in per_process.values() for b in batches])
    assert sorted(counted.tolist()) == list(range(1000))
    assert per_process[1][-1]["image"].shape == (48, 1, 224, 224, 3)
    assert not per_process[1][-1]["mask"].any()  # the last global batch: 40 real examples, all on process 0


def test_on_8_devices_the_papers_evaluation_batch_counts_every_test_image_once(cifar10_data_dir):
    """CIFAR's evaluation batch of 500, the config's, on 8 simulated devices: fitted to 504, 10,000 images counted."""
    import json
    import sys

    from tests.support.training import run

    argv = [sys.executable, "-m", "tests.support.count_on_devices", str(cifar10_data_dir), "500"]
    counted = json.loads(run(argv, devices=8).stdout.strip().splitlines()[-1])
    assert counted == {"devices": 8, "batch_used": 504, "examples": 10_000}


def test_protocols_are_checked_against_the_dataset(cifar10_data_dir):
    dataset, cfg = opened("cifar10", cifar10_data_dir)
    with pytest.raises(ValueError, match="10crop"):
        eval_iterator(dataset, cfg, split="test", protocol="10crop", global_batch_size=8)
    with pytest.raises(ValueError, match="multiple"):
        eval_iterator(
            dataset, cfg, split="test", protocol="single", global_batch_size=9, process_index=0, process_count=2
        )


def _ramp_jpeg(height: int, width: int) -> bytes:
    """Red rises with the column and green with the row, linearly (any resampling keeps a linear ramp, so a view's
    red and green say which source position each of its pixels shows); blue is fine diagonal stripes (detail that
    decoding at a reduced size and enlarging again would blur)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * (x + 0.5) / width, 255 * (y + 0.5) / height, 128 + 100 * np.sign(np.sin((x + y) / 2.5))], -1)
    out = io.BytesIO()
    Image.fromarray(rgb.round().astype(np.uint8)).save(out, "JPEG", quality=95, subsampling=0)
    return out.getvalue()


@pytest.mark.parametrize("height, width", [(300, 1000), (1000, 300), (500, 333), (1600, 2400)])
def test_multiscale_views_show_the_central_window_of_the_resized_image(height, width):
    """At each scale: the image resized to shorter side s (the other side in proportion), cut to at most 2s by 2s
    around its centre (Caffe's floor for odd margins), sampled where each pixel's centre falls. 1000 x 300 and
    300 x 1000 are cut (odd margins at s = 224); 1600 x 2400 is decoded at half size first (shorter side >= 1280)."""
    view = protocols.MultiScaleView(np.zeros((224, 224, 3), np.float32))
    example = view({"image": _ramp_jpeg(height, width)})
    reduced = min(height, width) >= 2 * max(protocols.MULTISCALE_SIDES)
    for side in protocols.MULTISCALE_SIDES:
        shorter, longer = min(height, width), max(height, width)
        resized = (side, round(longer * side / shorter))
        resized_h, resized_w = resized if height <= width else resized[::-1]
        kept_h, kept_w = min(resized_h, 2 * side), min(resized_w, 2 * side)
        top, left = (resized_h - kept_h) // 2, (resized_w - kept_w) // 2
        valid = example[f"valid_{side}"]
        assert valid[:kept_h, :kept_w].all() and valid.sum() == kept_h * kept_w
        pixels = 255 * example[f"image_{side}"][:kept_h, :kept_w].astype(np.float64)
        red = pixels[..., 0] - 255 * (left + np.arange(kept_w) + 0.5) / resized_w
        green = pixels[..., 1] - 255 * (top + np.arange(kept_h)[:, None] + 0.5) / resized_h
        # mean offsets in grey levels, away from the borders; half an output pixel is 0.17 or more here
        tolerance = 0.15 if reduced else 0.05  # reduced decoding rounds odd sizes: up to half a source pixel
        assert abs(red[4:-4, 4:-4].mean()) < tolerance and abs(green[4:-4, 4:-4].mean()) < tolerance, side
        assert pixels[..., 2].std() > 35, side  # the stripes survive (they blur away from a 1/8-size decode)


def test_the_centre_crop_uses_caffes_floor_for_odd_margins():
    # 256 x 351 at shorter side 256 stays 256 x 351: margins 32 and 127, so top 16 and left 63 (Caffe's integer
    # division; never 63.5)
    assert protocols.centre_crop(256, 351) == ScaleCrop(256, 16, 63)
    assert protocols.centre_crop(351, 256) == ScaleCrop(256, 63, 16)


@pytest.mark.parametrize("protocol", sorted(protocols.VIEWS))
def test_a_padding_example_has_a_real_example_s_keys_shapes_and_dtypes(protocol, sample_records):
    mean = np.zeros((32, 32, 3) if protocol == "single" else (224, 224, 3), np.float32)
    view = protocols.VIEWS[protocol](mean)
    if protocol == "single":
        out = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 77, np.uint8)).save(out, "PNG")
        records = [{"image": out.getvalue()}]
    else:
        records = sample_records[::6]
    for record in records:
        example = view(record)
        bucket = protocols.bucket_of(*images.jpeg_shape(record["image"])) if protocol == "multiscale" else 0
        empty = view.empty(bucket)
        assert {k: (v.shape, v.dtype) for k, v in empty.items()} == {k: (v.shape, v.dtype) for k, v in example.items()}
        assert not any(v.any() for v in empty.values())


def test_multiscale_batches_hold_one_bucket_each_and_count_every_image_once(varied_imagenet, monkeypatch):
    dataset, cfg, count = varied_imagenet
    monkeypatch.setattr(protocols, "MULTISCALE_SIDES", (224,))  # the batching is the question, not the scales
    batches = list(eval_iterator(dataset, cfg, split="validation", protocol="multiscale", global_batch_size=2))
    assert sum(int(b["mask"].sum()) for b in batches) == count == 3  # three buckets, each a batch of 1 + padding
    buckets = {protocols.bucket_of(*s) for s in dataset.image_sizes("validation")}
    assert {tuple(b["image_224"].shape[1:3]) for b in batches} == {protocols.canvas_shape(k, 224) for k in buckets}
    assert all(not b["image_224"][~b["mask"]].any() and not b["valid_224"][~b["mask"]].any() for b in batches)
