"""Published weights by name (resnet_jax.pretrained): download, verification, cache, conversion, evaluation,
transfer, and use in a flax.nnx program.

The files cannot be downloaded from the machines the tests run on: a local HTTP server on 127.0.0.1 serving
../shared/data/weights (akamaster's CIFAR ResNets, byte-exact) is the mirror, as `$RESNET_JAX_WEIGHTS_MIRROR`
serves an air-gapped cluster. Every other entry is checked offline against the tensor names and shapes its
publisher's net has.
"""

import dataclasses
import functools
import http.server
import sys
import threading

import flax
import jax
import numpy as np
import optax
import pytest

from resnet_jax import models, pretrained
from resnet_jax.core.errors import ConfigError, WeightsError
from resnet_jax.core.sharding import make_mesh
from resnet_jax.interop import convert
from resnet_jax.recipe.members import Members
from resnet_jax.run.state import create_train_state, start_from_weights
from tests.support.paths import SHARED_DATA, requires_shared_data
from tests.support.training import REPO, free_port, run, small_config

WEIGHTS = SHARED_DATA / "weights"
RESNET20 = pretrained.get("resnet20", "akamaster")


class _Server:
    """An HTTP server on 127.0.0.1 serving `folder`; `cut_after` bytes of each file, then the connection drops."""

    def __init__(self, folder, cut_after=None):
        cut = cut_after

        class Handler(http.server.SimpleHTTPRequestHandler):
            def copyfile(self, source, outputfile):
                if cut is None:
                    return super().copyfile(source, outputfile)
                outputfile.write(source.read(cut))

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    """Serves ../shared/data/weights over HTTP as the mirror, with an empty cache."""
    if not WEIGHTS.is_dir():
        pytest.skip(f"{WEIGHTS} is absent")
    server = _Server(str(WEIGHTS))
    monkeypatch.setenv(pretrained.MIRROR_ENV, server.url)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    yield server
    server.stop()


def _cache_files(tmp_path):
    folder = tmp_path / "cache"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@requires_shared_data
def test_load_downloads_verifies_caches_and_converts_then_works_offline(mirror, tmp_path, cifar10_data_dir):
    model, variables, entry = pretrained.load("resnet20", "akamaster")
    assert entry is RESNET20 and _cache_files(tmp_path) == [RESNET20.file_name]
    reference = convert.load_torch_state_dict("resnet20", convert.read_state_dict(WEIGHTS / "resnet20-12fca82f.npz"))
    jax.tree.map(np.testing.assert_array_equal, variables, reference)
    assert model.num_classes == 10
    mirror.stop()  # from now on only the cache has the file
    result = run(
        [
            sys.executable,
            "-m",
            "resnet_jax.evaluate",
            "--weights=resnet20:akamaster",
            "--protocol=single",
            f"--data_dir={cifar10_data_dir}",
        ]
    )
    # The independent NumPy evaluation of these weights on the JPEG test set (../shared/data/README.md).
    assert "resnet20:akamaster test (single): top-1 error 18.97% (accuracy 81.03%)" in result.stderr
    assert "10000 examples; published: top-1 accuracy 91.73%" in result.stderr
    assert _cache_files(tmp_path) == [RESNET20.file_name]


@requires_shared_data
@pytest.mark.parametrize("damage", ["truncated", "wrong file", "connection cut"])
def test_bad_downloads_are_refused_and_never_cached(damage, monkeypatch, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    data = (WEIGHTS / RESNET20.file_name).read_bytes()
    other = (WEIGHTS / "resnet32-d509ac18.th").read_bytes()
    (served / RESNET20.file_name).write_bytes(
        {"truncated": data[: len(data) // 2], "wrong file": other}.get(damage, data)
    )
    server = _Server(str(served), cut_after=1000 if damage == "connection cut" else None)
    monkeypatch.setenv(pretrained.MIRROR_ENV, server.url)
    expected = "ended after 1000 of|Could not download" if damage == "connection cut" else "has SHA-256 .* not kept"
    try:
        with pytest.raises(WeightsError, match=expected) as error:
            pretrained.load("resnet20", "akamaster", cache_dir=tmp_path / "cache")
    finally:
        server.stop()
    assert RESNET20.url in str(error.value) and str(tmp_path / "cache") in str(error.value)  # where to put it
    assert _cache_files(tmp_path) == []


def test_no_network_is_one_line_naming_where_to_put_the_file(monkeypatch, tmp_path, cifar_slice_data_dir):
    monkeypatch.setenv(pretrained.MIRROR_ENV, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    command = ["-m", "resnet_jax.evaluate", "--weights=resnet20:akamaster", f"--data_dir={cifar_slice_data_dir}"]
    result = run([sys.executable, *command], expect=2)
    line = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and line.startswith("resnet_jax: error: Could not download"), line
    assert f"download {RESNET20.url} to {tmp_path / 'cache' / RESNET20.file_name}" in line


@requires_shared_data
def test_a_damaged_cached_file_is_fetched_again_and_a_folder_mirror_serves(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / RESNET20.file_name).write_bytes(b"not the weights")
    monkeypatch.setenv(pretrained.MIRROR_ENV, str(WEIGHTS))
    path = pretrained.fetch(RESNET20, cache)
    assert path.read_bytes() == (WEIGHTS / RESNET20.file_name).read_bytes()


@requires_shared_data
def test_a_published_prefix_pins_the_whole_digest_of_the_first_download(monkeypatch, tmp_path):
    entry = dataclasses.replace(RESNET20, sha256=RESNET20.sha256[:8])  # as torchvision publishes its hashes
    monkeypatch.setenv(pretrained.MIRROR_ENV, str(WEIGHTS))
    path = pretrained.fetch(entry, tmp_path)
    assert (tmp_path / f"{entry.file_name}.sha256").read_text().strip() == RESNET20.sha256
    path.write_bytes(path.read_bytes()[:-1] + b"\0")  # damaged later: the pinned digest catches it
    monkeypatch.setenv(pretrained.MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(WeightsError, match="mirror has no"):
        pretrained.fetch(entry, tmp_path)
    assert not path.exists()


# The publishers' nets by depth, typed from their code: torchvision.models.resnet's block and blocks per stage
# (also mmpretrain's ResNet, ResNet_CIFAR and ResNetV1d), akamaster's n of ResNet-6n+2.
_TORCHVISION_STAGES = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3]),
                       101: ("bottleneck", [3, 4, 23, 3]), 152: ("bottleneck", [3, 8, 36, 3])}  # fmt: skip


def _publishers_net(entry: pretrained.Weights):
    """The publisher's own net restated in PyTorch (experiments/torch_reference.py, written from their code, not from
    ours), on torch's meta device: names and shapes without memory."""
    torch = pytest.importorskip("torch")
    from experiments import torch_reference as ref

    depth = int(entry.model.removeprefix("resnet").split("_")[0])
    with torch.device("meta"):
        if entry.tag == "akamaster":
            return ref.CifarResNet(n=(depth - 2) // 6)
        kind, stages = _TORCHVISION_STAGES[depth]
        block = ref.TvBasicBlock if kind == "basic" else ref.TvBottleneck
        if entry.tag.startswith("torchvision"):
            return ref.TorchvisionResNet(block, stages)
        features = 512 * block.expansion
        if entry.model.endswith("_v1d"):
            return ref.MMPretrainClassifier(ref.ResNetV1dBackbone(stages), features, 1000)
        backbone = ref.TorchvisionResNet(block, stages, cifar_stem=True)
        backbone.fc = torch.nn.Identity()  # ResNet_CIFAR is a backbone: its classifier is the head's
        return ref.MMPretrainClassifier(backbone, features, 10)


def _publishers_state_dict(entry: pretrained.Weights) -> dict[str, np.ndarray]:
    """A state dict with the names and shapes of the publisher's file, zeros: its net's `state_dict()`, with
    DataParallel's `module.` for akamaster's checkpoints, and without BN's step counters in the files saved before
    torch 0.4.1 added them (akamaster's, torchvision's v1)."""
    prefix = "module." if entry.tag == "akamaster" else ""
    counters = entry.tag not in ("akamaster", "torchvision_v1")
    return {
        prefix + name: np.broadcast_to(np.zeros((), str(t.dtype).removeprefix("torch.")), tuple(t.shape))
        for name, t in _publishers_net(entry).state_dict().items()
        if counters or not name.endswith("num_batches_tracked")
    }


@requires_shared_data
def test_the_restated_publishers_nets_have_their_files_tensors():
    """The restated akamaster nets against the files they published (read by torch itself): same names, shapes."""
    torch = pytest.importorskip("torch")
    for depth in (20, 32, 44, 56):
        entry = pretrained.get(f"resnet{depth}", "akamaster")
        published = torch.load(WEIGHTS / entry.file_name, map_location="cpu", weights_only=True)["state_dict"]
        restated = _publishers_state_dict(entry)
        assert {k: tuple(v.shape) for k, v in published.items()} == {k: v.shape for k, v in restated.items()}


@pytest.mark.parametrize("entry", pretrained.WEIGHTS, ids=lambda e: e.name)
def test_every_entry_builds_and_takes_its_files_tensors(entry):
    state = _publishers_state_dict(entry)
    variables = convert.load_torch_state_dict(entry.model, state, layout=entry.layout, **entry.options)
    count = sum(x.size for x in jax.tree.leaves(variables["params"]))
    published = models.spec(entry.model).parameters  # torchvision's num_params, mmpretrain's rounded millions
    if published.isdigit():
        assert count == int(published)
    else:  # "1.7M", "23.52M": rounded as printed
        digits = len(published[:-1].partition(".")[2])
        assert round(count / 1e6, digits) == float(published[:-1])
    assert entry.sha256 and entry.file_name.split("-")[-1].split(".")[0].startswith(entry.sha256[:8])
    assert entry.dataset == models.spec(entry.model).dataset and 0 < entry.top1 < 100 and entry.licence


def test_unknown_weights_and_contradicting_options_are_named():
    with pytest.raises(ConfigError, match="resnet50 has torchvision_v1, torchvision_v2"):
        pretrained.load("resnet50", "imagenet")
    with pytest.raises(ConfigError, match="trained with stride_on_3x3=True"):
        pretrained.load("resnet50", "torchvision_v1", stride_on_3x3=False)
    with pytest.raises(ConfigError, match="give MODEL:TAG"):
        pretrained.parse("resnet50")


@requires_shared_data
def test_transfer_keeps_the_backbone_and_gives_each_member_a_fresh_head(monkeypatch, tmp_path):
    monkeypatch.setenv(pretrained.MIRROR_ENV, str(WEIGHTS))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path))
    _, trained, _ = pretrained.load("resnet20", "akamaster")
    model, variables, _ = pretrained.load("resnet20", "akamaster", num_classes=100)
    assert model.num_classes == 100 and variables["params"]["fc"]["kernel"].shape == (64, 100)
    backbone = flax.traverse_util.flatten_dict({**variables["params"], "fc": {}})
    for path, value in backbone.items():
        np.testing.assert_array_equal(value, flax.traverse_util.flatten_dict(trained["params"])[path])
    members = Members(first_seed=3, count=2, mode="unrolled")
    state = create_train_state(model, optax.sgd(0.1), (32, 32, 3), members, make_mesh())
    state = start_from_weights(state, "resnet20:akamaster", 100, members, make_mesh())
    np.testing.assert_array_equal(state.params["conv1"]["kernel"][1], trained["params"]["conv1"]["kernel"])
    heads = np.asarray(state.params["fc"]["kernel"])
    assert not np.allclose(heads[0], heads[1])  # each member's head from its own seed
    np.testing.assert_array_equal(heads[1], pretrained.with_new_head(trained, 100, 4)["params"]["fc"]["kernel"])


@requires_shared_data
def test_init_from_starts_a_run_from_the_weights_and_needs_their_input(monkeypatch, tmp_path, cifar_slice_data_dir):
    from resnet_jax.recipe.config import validate
    from resnet_jax.train.loop import Trainer

    monkeypatch.setenv(pretrained.MIRROR_ENV, str(WEIGHTS))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    config = small_config(cifar_slice_data_dir, init_from="resnet20:akamaster")
    with pytest.raises(ConfigError, match=r"--config.data.normalization=per_channel --config.data.channel_mean="):
        validate(config)
    config.data.normalization = "per_channel"
    config.data.channel_mean, config.data.channel_std = RESNET20.mean, RESNET20.std
    trainer = Trainer(config, str(tmp_path / "run"))
    _, variables, _ = pretrained.load("resnet20", "akamaster")
    for collection in ("params", "batch_stats"):
        started = jax.tree.map(lambda x: x[0], getattr(trainer.state, collection))
        jax.tree.map(np.testing.assert_array_equal, started, variables[collection])
    trainer.close()


@requires_shared_data
def test_the_nnx_example_evaluates_and_trains_the_published_weights(monkeypatch, tmp_path, cifar_slice_data_dir):
    monkeypatch.setenv(pretrained.MIRROR_ENV, str(WEIGHTS))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path))
    result = run(
        [
            sys.executable,
            str(REPO / "examples" / "nnx_transfer.py"),
            f"--data_dir={cifar_slice_data_dir}",
            "--steps=3",
            "--batch_size=16",
        ]
    )
    assert "resnet20:akamaster on 16 test images: accuracy" in result.stderr
    line = next(x for x in result.stderr.splitlines() if "nnx and linen agree after training" in x)
    first, last = (float(x) for x in line.split("loss ")[1].split(" -> "))
    assert last < first  # the nnx step trains (the same batch three times)
