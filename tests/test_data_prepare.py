"""Preparing datasets from the real files of ../shared/data, and the errors for missing or half-written ones."""

import csv
import io
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from resnet_jax.core.errors import DatasetMissingError
from resnet_jax.data import cifar, imagenet, prepared
from resnet_jax.data.images import decode_png
from resnet_jax.data.pipeline import train_iterator
from resnet_jax.data.prepare import prepare
from resnet_jax.data.prepared import PreparedDataset
from tests.support.data import CIFAR_INDEX, CIFAR_TARBALL, data_config, imagenet_class_folders, imagenet_sample_rows
from tests.support.paths import SHARED_DATA


def _open(name, data_dir, holdout_val=False):
    return PreparedDataset(name, str(data_dir), holdout_val)


def _records_by_id(dataset, split):
    source = dataset.source(split)
    records = source.__getitems__(list(range(len(source))))
    return {r["id"].decode(): r for r in records}


def test_cifar10_has_50000_10000_examples_and_the_labels_of_the_index(cifar10_data_dir):
    dataset = _open("cifar10", cifar10_data_dir)
    assert dataset.num_examples("train") == 50_000
    assert dataset.num_examples("test") == 10_000
    with open(SHARED_DATA / "cifar10" / "batches.meta", "rb") as f:
        assert [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]] == list(cifar.CIFAR10.labels)

    rows = list(csv.DictReader(open(CIFAR_INDEX)))
    sample = [rows[i] for i in np.random.default_rng(0).choice(len(rows), 300, replace=False)]
    wanted = {"cifar-10-images-jpg/" + r["jpeg_path"] for r in sample}
    with tarfile.open(CIFAR_TARBALL) as archive:
        jpegs = {m.name.split("/", 1)[1]: archive.extractfile(m).read() for m in archive if m.name in wanted}
    for split in ("train", "test"):
        records = _records_by_id(dataset, split)
        labels = np.array([r["label"] for r in records.values()])
        assert np.bincount(labels).tolist() == [len(records) // 10] * 10
        for row in (r for r in sample if r["split"] == split):
            record = records[row["jpeg_path"]]
            assert record["label"] == int(row["label"]) == cifar.CIFAR10.labels.index(row["class_name"])
            original = np.asarray(Image.open(io.BytesIO(jpegs[row["jpeg_path"]])).convert("RGB"))
            np.testing.assert_array_equal(decode_png(record["image"]), original)


def test_cifar10_per_pixel_mean_is_stored_for_train_and_the_45k_split(cifar10_data_dir):
    means = {holdout: _open("cifar10", cifar10_data_dir, holdout_val=holdout).mean_image for holdout in (False, True)}
    for mean in means.values():
        assert mean.shape == (32, 32, 3) and mean.dtype == np.float32
        # The well-known CIFAR-10 channel means, up to the JPEG re-encoding.
        np.testing.assert_allclose(mean.mean((0, 1)), [0.4914, 0.4822, 0.4465], atol=0.01)
    assert 0 < np.abs(means[True] - means[False]).max() < 0.01


def test_cifar10_holdout_split_is_45k_plus_5k_disjoint(cifar10_data_dir):
    dataset = _open("cifar10", cifar10_data_dir, holdout_val=True)
    assert dataset.num_examples("train") == 45_000 and dataset.num_examples("val") == 5_000
    train_ids, val_ids = _records_by_id(dataset, "train").keys(), _records_by_id(dataset, "val").keys()
    assert len(train_ids | val_ids) == 50_000
    with pytest.raises(ValueError, match="holdout_val"):
        _open("cifar10", cifar10_data_dir).num_examples("val")


@pytest.fixture
def python_tarball(tmp_path):
    """A cifar-10-python.tar.gz with the first 20 images of each original batch (real, lossless pixels)."""
    npz = SHARED_DATA / "cifar10" / "cifar10_original_labels_and_lossless_prefix.npz"
    if not npz.exists():
        pytest.skip(f"{npz} is absent")
    originals = np.load(npz)
    path = tmp_path / cifar.CIFAR10.tarball
    with tarfile.open(path, "w:gz") as archive:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {
                b"labels": originals[f"{name}_labels"][:20].tolist(),
                b"data": originals[f"{name}_data_prefix"][:20],
            }
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path, originals


def test_cifar10_from_the_python_tarball_keeps_tfds_ids_and_lossless_pixels(tmp_path, python_tarball):
    path, originals = python_tarball
    prepare("cifar10", source=str(path.parent), data_dir=str(tmp_path / "tfds"))
    dataset = _open("cifar10", tmp_path / "tfds")
    assert dataset.num_examples("train") == 100 and dataset.num_examples("test") == 20
    for split, batches in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        images = np.concatenate([originals[f"{b}_data_prefix"][:20] for b in batches])
        images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.concatenate([originals[f"{b}_labels"][:20] for b in batches])
        for example_id, record in _records_by_id(dataset, split).items():
            index = int(example_id.removeprefix(f"{split}_"))
            assert record["label"] == labels[index]
            np.testing.assert_array_equal(decode_png(record["image"]), images[index])


def test_cifar10_batches_may_not_unpickle_code(tmp_path):
    path = tmp_path / cifar.CIFAR10.tarball
    payload = pickle.dumps({b"labels": [0], b"data": np.zeros((1, 3072), np.uint8), b"x": print})
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        list(cifar.python_batches(path, cifar.CIFAR10, "train"))


def test_imagenet_class_folders_keep_the_files_and_the_sorted_wnid_labels(imagenet_samples_data_dir):
    dataset = _open("imagenet2012", imagenet_samples_data_dir)
    rows = {r["filename"]: r for r in imagenet_sample_rows()}
    assert [r["wnid"] for r in sorted(rows.values(), key=lambda r: int(r["label"]))] == sorted(
        r["wnid"] for r in rows.values()
    )
    for split in ("train", "validation"):
        source = dataset.source(split)
        assert len(source) == dataset.num_examples(split) == 1000
        for record in source.__getitems__(list(range(0, 1000, 7))):
            row = rows[record["file_name"].decode()]
            assert record["label"] == int(row["label"])
            assert record["image"] == (SHARED_DATA / "imagenet_samples" / "images" / row["filename"]).read_bytes()


def test_non_plain_jpegs_are_reencoded_as_rgb_jpeg(tmp_path):
    y, x = np.mgrid[0:40, 0:60]
    rgb = np.stack([4 * x, 6 * y, 2 * (x + y)], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it well
    plain, cmyk, png, garbage = (tmp_path / f"{n}.JPEG" for n in ("plain", "cmyk", "png", "garbage"))
    Image.fromarray(rgb).save(plain, format="JPEG")
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    Image.fromarray(rgb).save(png, format="PNG")
    garbage.write_bytes(b"not an image")
    assert imagenet._rgb_jpeg(plain) == plain.read_bytes()
    for path in (cmyk, png):
        encoded = imagenet._rgb_jpeg(path)
        assert simplejpeg.decode_jpeg_header(encoded)[2] == "YCbCr"
        assert np.abs(simplejpeg.decode_jpeg(encoded).astype(int) - rgb).mean() < 3
    with pytest.raises(ValueError, match="garbage.JPEG"):
        imagenet._rgb_jpeg(garbage)


def test_tfds_own_builders_say_they_need_tensorflow(tmp_path):
    try:
        import tensorflow  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        pytest.skip("TensorFlow is installed")
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as archive:
        info = tarfile.TarInfo("ILSVRC2012_val_00000001.JPEG")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"JPEG"))
    with pytest.raises(ModuleNotFoundError, match="pip install tensorflow-cpu"):
        prepare("imagenet2012", source=str(manual), data_dir=str(tmp_path / "tfds"))


def test_a_missing_dataset_names_the_command_that_prepares_it(tmp_path):
    for name in ("cifar10", "imagenet2012"):
        with pytest.raises(DatasetMissingError, match=f"python -m resnet_jax.data.prepare {name}"):
            _open(name, tmp_path)


def test_a_run_config_naming_its_files_prepares_a_missing_dataset_once(tmp_path, monkeypatch):
    """`config.prepare_from` (the quick start's): a missing dataset is prepared from the files, a present one is
    opened as it is."""
    from resnet_jax.data import prepare as preparation

    source = _small_imagenet_source(tmp_path)
    cfg = data_config("imagenet2012", tmp_path / "tfds")
    dataset = preparation.ensure_prepared(cfg, str(source))
    assert dataset.num_examples("train") == 8
    monkeypatch.setattr(preparation, "prepare", lambda *a, **k: pytest.fail("prepared a second time"))
    assert preparation.ensure_prepared(cfg, str(source)).num_examples("validation") == 8


def _small_imagenet_source(tmp_path):
    """Eight real classes, one image each, as class folders."""
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent")
    return imagenet_class_folders(tmp_path / "source", imagenet_sample_rows()[::125])


def test_the_prepare_command_line_makes_a_readable_dataset(tmp_path):
    command = [
        sys.executable,
        "-m",
        "resnet_jax.data.prepare",
        "imagenet2012",
        f"--source={_small_imagenet_source(tmp_path)}",
        f"--data_dir={tmp_path / 'tfds'}",
    ]
    assert subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().endswith("5.1.0")
    dataset, cfg = _open("imagenet2012", tmp_path / "tfds"), data_config("imagenet2012", tmp_path / "tfds")
    assert dataset.num_examples("train") == dataset.num_examples("validation") == 8
    assert next(train_iterator(dataset, cfg, global_batch_size=4, seed=0))["image"].shape == (4, 224, 224, 3)


@pytest.fixture
def small_imagenet(tmp_path):
    prepare("imagenet2012", source=str(_small_imagenet_source(tmp_path)), data_dir=str(tmp_path / "tfds"))
    return data_config("imagenet2012", tmp_path / "tfds"), _open("imagenet2012", tmp_path / "tfds").path


@pytest.mark.parametrize("damage", ["mean file", "shard file", "unfinished write"])
def test_a_half_written_dataset_names_the_command_that_prepares_it(small_imagenet, damage):
    cfg, path = small_imagenet
    if damage == "mean file":
        (path / prepared.MEAN_FILE).unlink()
    elif damage == "shard file":
        next(path.glob("imagenet2012-train.array_record-*")).unlink()
    else:  # tfds writes into incomplete.* and renames at the very end
        shutil.move(path, path.parent / f"incomplete.ABC123_{path.name}")
    with pytest.raises(DatasetMissingError, match="python -m resnet_jax.data.prepare imagenet2012"):
        PreparedDataset.open(cfg)  # before any work: the first thing a run does with its data


def _cifar100_tarball(path, images_per_split, seed=0):
    """A cifar-100-python.tar.gz in the original format (protocol-2 pickles `train`, `test`, `meta`), random pixels."""
    rng = np.random.default_rng(seed)
    layout = cifar.CIFAR100
    contents = {}
    for split, count in images_per_split.items():
        fine = rng.integers(0, 100, count)
        contents[split] = {
            b"data": rng.integers(0, 256, (count, 3072), np.uint8),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": [layout.coarse_label(int(f)) for f in fine],
            b"filenames": [f"{i}.png".encode() for i in range(count)],
        }
    contents["meta"] = {
        b"fine_label_names": [n.encode() for n in layout.labels],
        b"coarse_label_names": [n.encode() for n in layout.coarse_labels],
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, batch in contents.items():
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return contents


def test_cifar100_from_the_python_tarball_and_from_class_folders(tmp_path):
    tarball = tmp_path / cifar.CIFAR100.tarball
    contents = _cifar100_tarball(tarball, {"train": 30, "test": 10})
    prepare("cifar100", source=str(tarball), data_dir=str(tmp_path / "tfds"))
    dataset = _open("cifar100", tmp_path / "tfds")
    assert dataset.num_examples("train") == 30 and dataset.num_examples("test") == 10
    for split in ("train", "test"):
        pixels = contents[split][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for example_id, record in _records_by_id(dataset, split).items():
            index = int(example_id.removeprefix(f"{split}_"))
            assert record["label"] == contents[split][b"fine_labels"][index]
            assert record["coarse_label"] == contents[split][b"coarse_labels"][index]
            np.testing.assert_array_equal(decode_png(record["image"]), pixels[index])
    assert dataset.mean_image.shape == (32, 32, 3)

    # The same images as class folders: labels from the folder names, coarse labels from the superclasses.
    folders = tmp_path / "folders"
    for split in ("train", "test"):
        pixels = contents[split][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for index, label in enumerate(contents[split][b"fine_labels"]):
            path = folders / split / cifar.CIFAR100.labels[label] / f"{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index]).save(path)
    prepare("cifar100", source=str(folders), data_dir=str(tmp_path / "tfds_folders"))
    records = _records_by_id(_open("cifar100", tmp_path / "tfds_folders"), "train")
    for example_id, record in records.items():
        _, label_name, file_name = example_id.split("/")
        index = int(file_name.removesuffix(".png"))
        assert cifar.CIFAR100.labels[record["label"]] == label_name
        assert record["coarse_label"] == contents["train"][b"coarse_labels"][index]
    assert len(cifar.CIFAR100.labels) == len(set(cifar.CIFAR100.labels)) == 100
    assert len(cifar.CIFAR100.coarse_labels) == 20


def _cifar_class_folders(root, per_class=2):
    """A few real CIFAR-10 JPEGs as class folders train/<class>/, test/<class>/ under `root`."""
    kept = {}
    with tarfile.open(CIFAR_TARBALL) as archive:
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and kept.get(tuple(parts[1:3]), 0) < per_class:
                kept[tuple(parts[1:3])] = kept.get(tuple(parts[1:3]), 0) + 1
                path = root / "/".join(parts[1:])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.extractfile(member).read())
            if len(kept) == 20 and min(kept.values()) == per_class:
                break
    return root


@pytest.mark.parametrize(
    "case", ["missing source", "truncated archive", "empty class folder", "image that does not decode", "not a class"]
)
def test_a_failed_preparation_is_one_line_with_status_2_and_leaves_no_dataset(tmp_path, case):
    if not CIFAR_TARBALL.exists():
        pytest.skip(f"{CIFAR_TARBALL} is absent")
    name, source = "cifar10", _cifar_class_folders(tmp_path / "folders")
    if case == "missing source":
        source, expected = tmp_path / "nope.tar.gz", "nope.tar.gz does not exist"
    elif case == "truncated archive":
        source = tmp_path / "cut.tar.gz"
        source.write_bytes(CIFAR_TARBALL.read_bytes()[:100_000])
        expected = "cut.tar.gz failed reading it: EOFError"
    elif case == "empty class folder":
        name, source = "imagenet2012", _small_imagenet_source(tmp_path)
        (source / "train" / "n15075141").mkdir()
        expected = "n15075141 holds no images"
    elif case == "image that does not decode":
        (source / "train" / "cat" / "broken.jpg").write_bytes(b"not a JPEG")
        expected = "train/cat/broken.jpg does not decode as an image"
    else:
        (source / "test" / "zebra").mkdir()
        (source / "test" / "zebra" / "z.jpg").write_bytes((source / "test" / "cat").iterdir().__next__().read_bytes())
        expected = "folder 'zebra' of test/zebra/z.jpg is not a class of cifar10"
    command = [sys.executable, "-m", "resnet_jax.data.prepare", name, f"--source={source}", f"--data_dir={tmp_path}/d"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("resnet_jax: error: ") and expected in line, line
    with pytest.raises(DatasetMissingError):
        PreparedDataset(name, str(tmp_path / "d"))
