"""PyTorch state dicts in and out: logits equal the PyTorch reference on the same weights."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.convert import export_torch_state_dict, load_torch_state_dict, read_state_dict
from resnet_jax.models import create_model

torch = pytest.importorskip("torch")
from experiments import torch_reference as ref  # noqa: E402


def _randomise(module, seed):
    """Random BN statistics and affine terms, so that a wrong mapping of any BN tensor changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return module.eval()


def _state_dict(module):
    return {k: v.numpy() for k, v in module.state_dict().items()}


def _compare(name, torch_model, size, **options):
    torch.manual_seed(0)
    _randomise(torch_model, 0)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    variables = load_torch_state_dict(name, _state_dict(torch_model), **options)
    model = create_model(name, num_classes=expected.shape[1], **options)
    logits = np.asarray(model.apply(variables, jnp.asarray(x)))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    return variables


@pytest.mark.parametrize(
    "name,block,layers", [("resnet18", ref.TvBasicBlock, [2, 2, 2, 2]), ("resnet50", ref.TvBottleneck, [3, 4, 6, 3])]
)
def test_torchvision_layout_matches_reference(name, block, layers):
    torch_model = ref.TorchvisionResNet(block, layers, num_classes=1000)
    # torchvision's ResNets are v1.5 (stride on the 3x3); the 193-pixel input has odd sizes at every stage.
    _compare(name, torch_model, 193, stride_on_3x3=True)


def test_v1_stride_placement_differs_from_torchvision():
    torch_model = _randomise(ref.TorchvisionResNet(ref.TvBottleneck, [3, 4, 6, 3]), 0)
    with pytest.raises(AssertionError):
        _compare("resnet50", torch_model, 64)  # v1 on v1.5 weights gives other logits


def test_cifar_layout_matches_reference():
    _compare("resnet32", ref.CifarResNet(n=5), 32)


@pytest.mark.parametrize(
    "name,block,layers",
    [("resnet18_cifar", ref.TvBasicBlock, [2, 2, 2, 2]), ("resnet50_cifar", ref.TvBottleneck, [3, 4, 6, 3])],
)
def test_cifar_stem_nets_convert_with_torchvision_names(name, block, layers):
    """mmpretrain's CIFAR nets: torchvision's names, a 3x3 stride-1 conv1, no max pool, v1.5 bottlenecks."""
    variables = _compare(name, ref.TorchvisionResNet(block, layers, num_classes=100, cifar_stem=True), 32)
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)
    exported = export_torch_state_dict(name, variables)
    assert exported["conv1.weight"].shape == (64, 3, 3, 3) and exported["fc.weight"].shape == (
        100,
        512 * block.expansion,
    )


def test_export_round_trips():
    torch_model = _randomise(ref.CifarResNet(n=3), 1)
    state = _state_dict(torch_model)
    variables = load_torch_state_dict("resnet20", state)
    exported = export_torch_state_dict("resnet20", variables)
    expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert exported.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(exported[k], expected[k], err_msg=k)
    # and a fresh Flax model exports into the reference, which then computes what Flax computes
    model = create_model("resnet50", num_classes=10, stride_on_3x3=True)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    reference = ref.TorchvisionResNet(ref.TvBottleneck, [3, 4, 6, 3], num_classes=10).eval()
    result = reference.load_state_dict(
        {k: torch.tensor(v) for k, v in export_torch_state_dict("resnet50", variables).items()}, strict=False
    )
    assert not result.unexpected_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected_logits = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(model.apply(variables, x), expected_logits, rtol=1e-4, atol=1e-5)


def test_mismatches_name_the_tensor(tmp_path):
    state = _state_dict(ref.CifarResNet(n=3))
    with pytest.raises(ValueError, match=r"missing tensors \['layer1.0.conv1.weight'\]"):
        load_torch_state_dict("resnet20", {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"})
    with pytest.raises(ValueError, match=r"unused tensors \['extra.weight'\]"):
        load_torch_state_dict("resnet20", {**state, "extra.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="'layer2.1.conv2.weight' has shape"):
        load_torch_state_dict("resnet20", {**state, "layer2.1.conv2.weight": np.zeros((32, 32, 1, 1))})
    with pytest.raises(ValueError, match=r"resnet20 \{'shortcut': 'B'\} in cifar_6n2 layout: missing tensors \['lay"):
        load_torch_state_dict("resnet20", state, shortcut="B")  # the options that change the tensors are named
    with pytest.raises(ValueError, match="missing tensors"):  # a 32-layer state dict is not a 20-layer one
        load_torch_state_dict("resnet20", _state_dict(ref.CifarResNet(n=5)))
    with pytest.raises(ValueError, match="no 'fc.weight'"):
        load_torch_state_dict("resnet18", state)
    with pytest.raises(ValueError, match=r"expected a .npz, .safetensors or torch.save file \(.pth, .pt, .th\)"):
        read_state_dict(tmp_path / "weights.ckpt")


def test_reads_npz_and_safetensors(tmp_path):
    from safetensors.numpy import save_file

    state = {k: v for k, v in _state_dict(ref.CifarResNet(n=3)).items() if not k.endswith("num_batches_tracked")}
    np.savez(tmp_path / "w.npz", **state)
    save_file(state, str(tmp_path / "w.safetensors"))
    for path in (tmp_path / "w.npz", tmp_path / "w.safetensors"):
        loaded = read_state_dict(path)
        assert loaded.keys() == state.keys()
        assert all(np.array_equal(loaded[k], state[k]) for k in state)


# mmpretrain's layout, from its source (resnet.py, resnet_cifar.py, ResLayer): torchvision's names under `backbone.`
# with the classifier `head.fc`; ResNetV1d's deep stem is three ConvModules (`conv`, `bn`) and an AvgPool2d leads a
# strided shortcut's Sequential, so its 1x1 conv and BN are downsample.1 and downsample.2.
_BN = ("weight", "bias", "running_mean", "running_var")


def _mmpretrain_v1d_keys(stage_sizes):
    keys = []
    for k in range(3):
        keys += [f"backbone.stem.{k}.conv.weight"] + [f"backbone.stem.{k}.bn.{b}" for b in _BN]
    for stage, blocks in enumerate(stage_sizes, 1):
        for i in range(blocks):
            for j in (1, 2, 3):
                keys += [f"backbone.layer{stage}.{i}.conv{j}.weight"]
                keys += [f"backbone.layer{stage}.{i}.bn{j}.{b}" for b in _BN]
        conv, bn = (0, 1) if stage == 1 else (1, 2)  # layer1's shortcut has stride 1: no AvgPool2d
        keys += [f"backbone.layer{stage}.0.downsample.{conv}.weight"]
        keys += [f"backbone.layer{stage}.0.downsample.{bn}.{b}" for b in _BN]
    return keys + ["head.fc.weight", "head.fc.bias"]


def _random_variables(name, num_classes, seed=0):
    """Every leaf random (BN statistics included), so that a swap of two same-shaped tensors shows."""
    model = create_model(name, num_classes=num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


@pytest.mark.parametrize("name,num_classes", [("resnet18_cifar", 10), ("resnet50_cifar", 100), ("resnet50_v1d", 1000)])
def test_mmpretrain_layout_round_trips(name, num_classes):
    variables = _random_variables(name, num_classes)
    exported = export_torch_state_dict(name, variables, layout="mmpretrain")
    assert all(k.startswith(("backbone.", "head.fc.")) for k in exported)
    for back in (load_torch_state_dict(name, exported), load_torch_state_dict(name, exported, layout="mmpretrain")):
        flat, original = flax.traverse_util.flatten_dict(back), flax.traverse_util.flatten_dict(variables)
        assert flat.keys() == original.keys()
        for path, value in original.items():
            np.testing.assert_array_equal(flat[path], value, err_msg="/".join(path))
    prefixed = {f"module.{k}": v for k, v in exported.items()}  # DataParallel's prefix, then mmpretrain's
    assert load_torch_state_dict(name, prefixed)["params"].keys() == variables["params"].keys()


def test_mmpretrain_v1d_names_and_shapes_are_mmpretrains():
    variables = _random_variables("resnet50_v1d", 1000)
    exported = export_torch_state_dict("resnet50_v1d", variables)  # the v1d nets' default layout
    expected = _mmpretrain_v1d_keys((3, 4, 6, 3))
    assert len(expected) == len(set(expected)) == 277
    assert sorted(exported) == sorted(expected)
    shapes = {
        "backbone.stem.0.conv.weight": (32, 3, 3, 3),
        "backbone.stem.1.conv.weight": (32, 32, 3, 3),
        "backbone.stem.2.conv.weight": (64, 32, 3, 3),
        "backbone.stem.2.bn.running_var": (64,),
        "backbone.layer1.0.conv1.weight": (64, 64, 1, 1),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer1.0.downsample.1.running_mean": (256,),
        "backbone.layer2.0.conv1.weight": (128, 256, 1, 1),
        "backbone.layer2.0.conv2.weight": (128, 128, 3, 3),
        "backbone.layer2.0.downsample.1.weight": (512, 256, 1, 1),
        "backbone.layer2.0.downsample.2.weight": (512,),
        "backbone.layer4.0.downsample.1.weight": (2048, 1024, 1, 1),
        "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "head.fc.weight": (1000, 2048),
        "head.fc.bias": (1000,),
    }
    for key, shape in shapes.items():
        assert exported[key].shape == shape, key
    kernel = np.asarray(variables["params"]["stem_conv1"]["kernel"])  # (kh, kw, in, out)
    np.testing.assert_array_equal(exported["backbone.stem.0.conv.weight"][5, 2, 0, 1], kernel[0, 1, 2, 5])


def test_mmpretrain_layout_errors_name_the_fix():
    variables = _random_variables("resnet50_v1d", 1000)
    exported = export_torch_state_dict("resnet50_v1d", variables)
    with pytest.raises(ValueError, match=r"missing tensors \['backbone.stem.1.bn.running_var'\]"):
        load_torch_state_dict(
            "resnet50_v1d", {k: v for k, v in exported.items() if k != "backbone.stem.1.bn.running_var"}
        )
    with pytest.raises(ValueError, match="deep \\(v1d\\) stem.*layout='mmpretrain'"):
        export_torch_state_dict("resnet50_v1d", variables, layout="torchvision")
    with pytest.raises(ValueError, match="Unknown PyTorch layout 'timm'"):
        load_torch_state_dict("resnet50_v1d", exported, layout="timm")
    with pytest.raises(ValueError, match="no 'fc.weight'.*torchvision layout"):
        load_torch_state_dict("resnet18_cifar", exported, layout="torchvision")


def test_mmpretrain_layout_matches_reference():
    cifar = ref.TorchvisionResNet(ref.TvBasicBlock, [2, 2, 2, 2], cifar_stem=True)
    cifar.fc = torch.nn.Identity()  # ResNet_CIFAR is a backbone: its classifier is the head's
    _compare("resnet18_cifar", ref.MMPretrainClassifier(cifar, 512, 10), 32)
    # 97 pixels: odd sizes before every average-pooled shortcut (ceil_mode, count_include_pad=False)
    _compare("resnet50_v1d", ref.MMPretrainClassifier(ref.ResNetV1dBackbone([3, 4, 6, 3]), 2048, 1000), 97)
