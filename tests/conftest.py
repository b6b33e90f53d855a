"""Session fixtures: real data from ../shared/data, prepared once per test session (helpers: tests/support/)."""

import io
import os
import shutil
import tarfile
import tempfile

import jax
import pytest

from tests.support.data import CIFAR_TARBALL, IMAGENET_SAMPLES, imagenet_sample_rows, opened, prepared_imagenet

# Session fixtures that prepare a large dataset: the tests that use one run on one test worker (pytest-xdist's
# loadgroup), so that it is prepared once rather than once per worker.
_PREPARED_ONCE = ("cifar10_data_dir", "imagenet_samples_data_dir")


# One persistent compilation cache for the whole session, fresh each session: the tests build the same small nets'
# programs again and again (each `train_and_evaluate` and each command compiles its own), and a program compiled once
# is then loaded from disk by every test, test worker and command (`--compilation_cache` defaults to JAX's variable).
# Fresh, so that no test depends on what an earlier session left; the test worker processes inherit it.
_JAX_CACHE = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the session's first process (xdist's controller, or the only one)
        os.environ[_JAX_CACHE] = config._resnet_jax_cache = tempfile.mkdtemp(prefix="resnet_jax_tests_jax_cache_")
    jax.config.update("jax_compilation_cache_dir", os.environ[_JAX_CACHE])


def pytest_unconfigure(config):
    if hasattr(config, "_resnet_jax_cache"):
        shutil.rmtree(config._resnet_jax_cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        shared = [name for name in _PREPARED_ONCE if name in getattr(item, "fixturenames", ())]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


@pytest.fixture(scope="session")
def cifar_slice_data_dir(tmp_path_factory):
    """A tfds data dir holding a real slice of CIFAR-10: the first 128 training and 50 test images of each class,
    prepared through the same command as the full dataset."""
    if not CIFAR_TARBALL.exists():
        pytest.skip(f"{CIFAR_TARBALL} is absent")
    from resnet_jax.data.prepare import prepare

    root = tmp_path_factory.mktemp("cifar_slice")
    per_split = {"train": 128, "test": 50}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_TARBALL) as src, tarfile.open(root / "slice.tar", "w") as dst:
        for member in src:
            if not member.isfile():
                continue
            _, split, cls, _ = member.name.split("/")
            if counts.get((split, cls), 0) < per_split[split]:
                counts[(split, cls)] = counts.get((split, cls), 0) + 1
                dst.addfile(member, io.BytesIO(src.extractfile(member).read()))
    data_dir = root / "tfds"
    prepare("cifar10", source=str(root / "slice.tar"), data_dir=str(data_dir))
    return data_dir


@pytest.fixture(scope="session")
def cifar10_data_dir(tmp_path_factory):
    """The whole real CIFAR-10 (JPEG copy, 50k/10k) prepared from its tarball with `prepare`."""
    if not CIFAR_TARBALL.exists():
        pytest.skip(f"{CIFAR_TARBALL} is absent")
    from resnet_jax.data.prepare import prepare

    data_dir = tmp_path_factory.mktemp("cifar10_full") / "tfds"
    prepare("cifar10", source=str(CIFAR_TARBALL), data_dir=str(data_dir))
    return data_dir


@pytest.fixture(scope="session")
def imagenet_samples_data_dir(tmp_path_factory):
    """The 1000 real ImageNet images, prepared."""
    return prepared_imagenet(tmp_path_factory.mktemp("imagenet_samples"), imagenet_sample_rows())


@pytest.fixture(scope="session")
def eight_imagenet_data_dir(tmp_path_factory):
    """Eight real ImageNet images of eight classes, prepared."""
    return prepared_imagenet(tmp_path_factory.mktemp("eight_imagenet"), imagenet_sample_rows()[::125])


@pytest.fixture(scope="session")
def varied_imagenet(tmp_path_factory):
    """(dataset, data config, count): one real ImageNet image of each of three canvas buckets (portrait, 4:3, and
    wider than 2:1), prepared as a small dataset."""
    if not IMAGENET_SAMPLES.exists():
        pytest.skip(f"{IMAGENET_SAMPLES} is absent")
    kinds = {"portrait": (0, 0.9), "4:3": (1.3, 1.34), "wide": (2.1, 99)}
    chosen = {}
    for row in imagenet_sample_rows():
        aspect = int(row["width"]) / int(row["height"])
        kind = next((k for k, (lo, hi) in kinds.items() if lo <= aspect < hi), None)
        if kind and kind not in chosen and int(row["width"]) * int(row["height"]) < 300_000:
            chosen[kind] = row
    data_dir = prepared_imagenet(tmp_path_factory.mktemp("varied_imagenet"), list(chosen.values()))
    return (*opened("imagenet2012", data_dir), len(chosen))
