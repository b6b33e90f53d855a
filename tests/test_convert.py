"""PyTorch state dicts in and out: logits equal the PyTorch reference on the same weights."""

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
    with pytest.raises(ValueError, match="missing tensors"):  # a 32-layer state dict is not a 20-layer one
        load_torch_state_dict("resnet20", _state_dict(ref.CifarResNet(n=5)))
    with pytest.raises(ValueError, match="no 'fc.weight'"):
        load_torch_state_dict("resnet18", state)
    with pytest.raises(ValueError, match="expected a .npz or .safetensors"):
        read_state_dict(tmp_path / "weights.pth")


def test_reads_npz_and_safetensors(tmp_path):
    from safetensors.numpy import save_file

    state = {k: v for k, v in _state_dict(ref.CifarResNet(n=3)).items() if not k.endswith("num_batches_tracked")}
    np.savez(tmp_path / "w.npz", **state)
    save_file(state, str(tmp_path / "w.safetensors"))
    for path in (tmp_path / "w.npz", tmp_path / "w.safetensors"):
        loaded = read_state_dict(path)
        assert loaded.keys() == state.keys()
        assert all(np.array_equal(loaded[k], state[k]) for k in state)
