"""The model zoo against the paper: parameter counts, multiply-adds, shapes, shortcut options, precision, BN groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import paper
from resnet_jax.models import MODEL_NAMES, BottleneckBlock, create_model, spec
from resnet_jax.models.flops import count_multiply_adds
from tests.support.nets import noisy_batch_stats, tiny_resnet


def _init_shapes(model, size):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def _num_params(variables):
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


PARAMETERS = paper.table("Parameter counts")  # torchvision's and mmpretrain's option-B counts
TABLE6 = paper.table("Table 6")
TABLE1 = paper.table("Table 1")


@pytest.mark.parametrize("name", PARAMETERS)
def test_imagenet_parameter_counts(name):
    count = _num_params(_init_shapes(create_model(name, num_classes=1000), 224))
    expected = PARAMETERS[name]["parameters"]
    assert (
        count == expected
        if expected == int(expected) and expected > 1e7 and "v1d" not in name
        else round(count / 1e6, 2) == round(expected / 1e6, 2)
    )  # exact counts where given, else millions to 2 decimals


# Table 6 gives millions to two significant figures; the public weights give the exact counts for 20..56.
@pytest.mark.parametrize("net", TABLE6)
def test_cifar_parameter_counts(net):
    count = _num_params(_init_shapes(create_model(net, num_classes=10), 32))
    millions = TABLE6[net]["parameters"] / 1e6
    assert round(count / 1e6, 2 if count < 1e6 else 1) == millions
    exact = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018}  # public weights
    if net in exact:
        assert count == exact[net]
    if net != "resnet1202":  # option A adds no parameters, so plain and residual nets are the same size
        assert _num_params(_init_shapes(create_model(net.replace("resnet", "plain"), num_classes=10), 32)) == count


@pytest.mark.parametrize("name", TABLE1)
def test_multiply_adds_match_table1(name):
    v1 = count_multiply_adds(create_model(name, num_classes=1000), (224, 224, 3))
    assert abs(v1 / TABLE1[name]["multiply-adds"] - 1) < 0.02
    v15 = count_multiply_adds(create_model(name, num_classes=1000, stride_on_3x3=True), (224, 224, 3))
    if TABLE1[name]["block"] == "basic":
        assert v15 == v1  # basic blocks have no 1x1 to move the stride from
    else:
        assert v15 > v1 * 1.02  # the 3x3 runs at the higher resolution in v1.5


def test_stage_sizes_are_table1s():
    for name, row in TABLE1.items():
        model = create_model(name, num_classes=1000)
        assert tuple(model.stage_sizes) == tuple(int(row[f"conv{i}_x"]) for i in range(2, 6))


def test_spec_entries_say_their_classes_inputs_and_defaults_as_their_sources():
    """What each entry answers, as its source has it: mmpretrain's ResNetV1d (deep stem, average-pool downsampling,
    `style='pytorch'`: the stride on the 3x3) and ResNet_CIFAR (a 3x3 stem, the stride on the 3x3); the paper's CIFAR
    nets take option A, its ImageNet nets option B (ResNet's default)."""
    assert (spec("resnet50").num_classes, spec("resnet50").input_shape) == (1000, (224, 224, 3))
    assert (spec("resnet20").num_classes, spec("resnet20").input_shape) == (10, (32, 32, 3))
    v1d, cifar_stem = spec("resnet50_v1d"), spec("resnet50_cifar")
    assert (v1d.default("stem"), v1d.default("avg_down"), v1d.default("stride_on_3x3")) == ("deep", True, True)
    assert (cifar_stem.default("stem"), cifar_stem.default("stride_on_3x3")) == ("cifar", True)
    assert spec("resnet20").default("shortcut") == "A" and spec("resnet50").default("shortcut") == "B"
    assert spec("resnet50").default("avg_down") is False and spec("resnet50").default("stride_on_3x3") is False
    assert create_model("resnet20", num_classes=10).bn_unbiased_var is False  # Flax's; the paper configs set it
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError: the registry cannot be edited by accident
        spec("resnet20").dataset = "imagenet2012"


def test_cifar_multiply_adds():
    # 3x3 convs on 32/16/8 maps: 16*16*9*1024 for the stem, then 2n layers per stage, plus the option-A-free fc.
    n = 3
    expected = (
        3 * 16 * 9 * 1024
        + 2 * n * (16 * 16 * 9 * 1024 + 32 * 32 * 9 * 256 + 64 * 64 * 9 * 64)
        - (32 * 32 * 9 * 256 - 16 * 32 * 9 * 256)
        - (64 * 64 * 9 * 64 - 32 * 64 * 9 * 64)
        + 64 * 10
    )
    assert count_multiply_adds(create_model("resnet20", num_classes=10), (32, 32, 3)) == expected


def test_shortcut_options_parameter_differences():
    def params(shortcut):
        return _num_params(_init_shapes(create_model("resnet34", num_classes=1000, shortcut=shortcut), 224))

    a, b, c = params("A"), params("B"), params("C")
    # B adds the three 1x1 projections (+BN) at conv3_1, conv4_1, conv5_1; A has none.
    projections = sum(cin * cout + 2 * cout for cin, cout in ((64, 128), (128, 256), (256, 512)))
    assert b - a == projections
    # C also projects the 13 identity shortcuts (2 + 3 + 5 + 2 blocks beyond the first of each stage, plus conv2_1).
    identities = 3 * (64 * 64 + 128) + 3 * (128 * 128 + 256) + 5 * (256 * 256 + 512) + 2 * (512 * 512 + 1024)
    assert c - b == identities
    assert _num_params(_init_shapes(create_model("plain34", num_classes=1000), 224)) == a


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes(name):
    if name in ("resnet1202", "resnet152_v1d", "plain152", "resnet152", "resnet101_v1d", "plain101", "resnet101"):
        size = spec(name).input_shape[0]
        out = jax.eval_shape(
            lambda: create_model(name, num_classes=7).init_with_output(
                jax.random.key(0), jnp.zeros((2, size, size, 3))
            )[0]
        )
        assert out.shape == (2, 7)
        return
    size = min(spec(name).input_shape[0], 64)  # ImageNet nets are fully convolutional up to the pool: small inputs work
    model = create_model(name, num_classes=7)
    variables = model.init(jax.random.key(0), jnp.zeros((2, size, size, 3)))
    logits = model.apply(variables, jnp.ones((2, size, size, 3)), train=False)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_backbone_features():
    model = create_model("resnet50", num_classes=1000)
    shapes = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), features=True)[0]
    )
    assert {k: v.shape for k, v in shapes.items()} == {
        "C2": (1, 56, 56, 256),
        "C3": (1, 28, 28, 512),
        "C4": (1, 14, 14, 1024),
        "C5": (1, 7, 7, 2048),
    }
    cifar = create_model("resnet20", num_classes=10)
    shapes = jax.eval_shape(
        lambda: cifar.init_with_output(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), features=True)[0]
    )
    assert [v.shape[1:] for v in shapes.values()] == [(32, 32, 16), (16, 16, 32), (8, 8, 64)]


def test_bfloat16_forward_close_to_float32():
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    f32 = create_model("resnet20", num_classes=10)
    bf16 = create_model("resnet20", num_classes=10, dtype="bfloat16")
    variables = f32.init(jax.random.key(0), x)
    # Train-mode BN so activations are normalised (fresh running stats would make eval outputs tiny and trivial).
    out32, _ = f32.apply(variables, x, train=True, mutable=["batch_stats"])
    out16, _ = bf16.apply(variables, x, train=True, mutable=["batch_stats"])
    assert jax.tree.map(lambda a: a.dtype, variables) == jax.tree.map(
        lambda a: a.dtype, bf16.init(jax.random.key(0), x)
    )  # parameters stay float32
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, atol=0.05 * float(jnp.abs(out32).max()))
    assert not np.allclose(out16, out32, atol=1e-6)  # it really ran in reduced precision


def test_zero_init_last_bn():
    def last_scales(model):
        params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
        return params["layer1_0"]["bn2"]["scale"], params["layer1_0"]["bn1"]["scale"]

    last, first = last_scales(create_model("resnet20", num_classes=10, zero_init_last_bn=True))
    assert not last.any() and first.all()
    last, _ = last_scales(create_model("resnet20", num_classes=10))
    assert last.all()


def test_he_initialisation():
    params = create_model("resnet56", num_classes=10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    kernel = params["layer3_4"]["conv2"]["kernel"]  # 3x3, 64 -> 64: std sqrt(2 / (9 * 64))
    assert abs(float(kernel.std()) / np.sqrt(2 / (9 * 64)) - 1) < 0.03
    assert float(jnp.abs(kernel).max()) > 2.5 * np.sqrt(2 / (9 * 64))  # untruncated Gaussian tails


def test_shortcut_projections_and_pointwise_convolutions_agree_across_conv_impls():
    """A bottleneck net's 1x1 convolutions are products (`PointwiseConv`) where XLA computes the convolutions on
    the CPU, convolutions where oneDNN does: the same logits. v1d's shortcut averages each 2x2 window before its
    stride-1 projection (checked against NumPy), where v1's projection takes one pixel in four."""
    import functools

    import flax.linen as nn

    from resnet_jax.models.resnet import ResNet, ShortcutBranch

    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    logits = {}
    for impl in ("xla", "onednn"):
        model = ResNet(stage_sizes=(1, 1), block_cls=BottleneckBlock, num_classes=10, widths=(4, 8), stem="cifar",
                       conv_impl=impl)  # fmt: skip
        variables = noisy_batch_stats(model.init(jax.random.key(1), x))
        logits[impl] = model.apply(variables, x)
        if impl == "xla":  # each 1x1 kernel a product (and the classifier), each other kernel a convolution
            kernels = [k.shape[:2] for k in jax.tree.leaves(variables["params"]) if k.ndim == 4]
            program = str(jax.make_jaxpr(model.apply)(variables, x))
            assert program.count("dot_general") == kernels.count((1, 1)) + 1 == 7
            assert program.count("conv_general_dilated") == len(kernels) - kernels.count((1, 1)) == 3
    np.testing.assert_allclose(logits["xla"], logits["onednn"], rtol=1e-5, atol=1e-5)

    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=nn.initializers.ones)
    norm = lambda name: lambda y: y  # noqa: E731 - the projection alone
    branch = ShortcutBranch(features=1, strides=2, kind="projection", conv=conv, norm=norm, avg_down=True)
    y = branch.apply(branch.init(jax.random.key(2), x), x)
    pooled = np.asarray(x).reshape(2, 8, 2, 8, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(y[..., 0], pooled.sum(-1), rtol=1e-5, atol=1e-5)


def test_bn_groups_default_to_flax_batchnorm_in_training_and_inference():
    """`GroupedBatchNorm` as it comes (one group: the whole batch, the biased moving variance) is Flax's BatchNorm:
    the same outputs and moving averages in training, the same outputs from those averages in inference."""
    import flax.linen as nn

    from resnet_jax.models.batch_norm import GroupedBatchNorm

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(2.0, 3.0, size=(8, 4, 4, 3)), jnp.float32)
    ours, theirs = GroupedBatchNorm(use_running_average=False), nn.BatchNorm(use_running_average=False, momentum=0.9)
    variables = theirs.init(jax.random.key(0), x)
    variables = {**variables, "params": {"scale": jnp.asarray([0.5, 1.0, 2.0]), "bias": jnp.asarray([1.0, 0.0, -1.0])}}
    (y, ours_stats), (y_ref, their_stats) = (
        m.apply(variables, x, mutable=["batch_stats"]) for m in (ours, theirs)
    )  # fmt: skip
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(ours_stats), jax.tree.leaves(their_stats), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    trained = {**variables, **ours_stats}  # moving averages far from their initial 0 and 1, and one variance of 0
    trained["batch_stats"] = {**trained["batch_stats"], "var": trained["batch_stats"]["var"].at[2].set(0.0)}
    infer = GroupedBatchNorm(use_running_average=True).apply(trained, x)
    np.testing.assert_allclose(infer, nn.BatchNorm(use_running_average=True).apply(trained, x), rtol=1e-5, atol=1e-5)


def test_bn_groups_correct_the_moving_variance_only_where_a_group_has_several_values():
    """Caffe's and PyTorch's unbiased moving variance: count / (count - 1) times the group's, count the values of a
    channel in a group; a group of one value has no unbiased variance, and leaves the biased one (zero) as it is."""
    from resnet_jax.models.batch_norm import GroupedBatchNorm

    norm = GroupedBatchNorm(use_running_average=False, group_size=1, unbiased_running_var=True, momentum=0.5)
    for width in (1, 2):  # one example per group, 1x1 or 1x2 maps: 1 or 2 values per channel
        x = jnp.asarray(np.arange(2 * width * 3, dtype=np.float32).reshape(2, 1, width, 3) ** 2)
        variables = norm.init(jax.random.key(0), x)
        _, stats = norm.apply(variables, x, mutable=["batch_stats"])
        biased = np.asarray(x).reshape(2, width, 3).var(axis=1).mean(axis=0)
        expected = 0.5 * 1.0 + 0.5 * biased * (width / (width - 1) if width > 1 else 1.0)
        np.testing.assert_allclose(stats["batch_stats"]["var"], expected, rtol=1e-6)


def test_bn_groups_use_per_group_statistics():
    """Group size g must equal running each group of g examples through the net on its own."""
    model = create_model("resnet20", num_classes=10, bn_group_size=4)
    whole = create_model("resnet20", num_classes=10)
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3)) * jnp.arange(1, 9)[:, None, None, None]
    variables = model.init(jax.random.key(1), x)
    grouped, stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
    separate = [whole.apply(variables, x[i : i + 4], train=True, mutable=["batch_stats"]) for i in (0, 4)]
    np.testing.assert_allclose(grouped, jnp.concatenate([s[0] for s in separate]), rtol=1e-4, atol=1e-4)
    mean_of_groups = jax.tree.map(lambda a, b: (a + b) / 2, separate[0][1], separate[1][1])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), stats, mean_of_groups)
    # and it differs from whole-batch statistics
    assert not np.allclose(grouped, whole.apply(variables, x, train=True, mutable=["batch_stats"])[0], atol=1e-3)
    with pytest.raises(ValueError, match="does not divide"):
        create_model("resnet20", num_classes=10, bn_group_size=3).apply(
            variables, x, train=True, mutable=["batch_stats"]
        )


def test_plain_nets_have_no_shortcut():
    """Silencing one block's residual branch cuts a plain net's signal, but a residual net carries it on."""
    plain, residual = create_model("plain20", num_classes=10), create_model("resnet20", num_classes=10)
    variables = plain.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if "layer2_1" in str(p) and "bn2" in str(p) else v, variables["params"]
    )
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    c3 = {m: m.apply({**variables, "params": params}, x, features=True)["C3"] for m in (plain, residual)}
    assert not c3[plain].any()
    assert c3[residual].any()


def test_remat_changes_memory_not_results():
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    labels = jnp.arange(4)

    def grads(model, variables):
        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

        return jax.grad(loss)(variables["params"])

    plain = create_model("resnet20", num_classes=10)
    variables = plain.init(jax.random.key(0), x)
    remat = create_model("resnet20", num_classes=10, remat=True)
    assert jax.tree.structure(remat.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        grads(remat, variables),
        grads(plain, variables),
    )


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(name="resnet19"), "Valid names: resnet18"),
        (dict(name="resnet50", shortcut="D"), "Valid values"),
        (dict(name="resnet50", bottleneck="v1"), "Valid options"),
        (dict(name="resnet50", dtype="int8"), "Valid values"),
    ],
)
def test_bad_names_and_options_list_the_valid_ones(bad, match):
    with pytest.raises(ValueError, match=match):
        create_model(num_classes=10, **bad)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"shortcut": "A"},
        {"residual": False},
        {"block_cls": BottleneckBlock},
        {"block_cls": BottleneckBlock, "stride_on_3x3": True},
        {"block_cls": BottleneckBlock, "stem": "deep", "avg_down": True, "stride_on_3x3": True},
    ],
    ids=["basic_B", "basic_A", "plain", "bottleneck_v1", "bottleneck_v1.5", "v1d"],
)
def test_score_map_on_a_canvas_equals_the_image_alone(fields):
    model = tiny_resnet(**fields)
    variables = noisy_batch_stats(model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    rng = np.random.default_rng(0)
    canvas_side = 320
    for height, width in [(224, 224), (231, 300), (300, 205), (320, 320)]:
        image = rng.normal(size=(1, height, width, 3)).astype(np.float32)
        canvas = np.zeros((1, canvas_side, canvas_side, 3), np.float32)
        canvas[:, :height, :width] = image
        valid = np.zeros((1, canvas_side, canvas_side), bool)
        valid[:, :height, :width] = True
        alone, everywhere = model.apply(variables, image, score_map=True)
        on_canvas, positions = model.apply(variables, canvas, score_map=True, valid=valid)
        rows, cols = alone.shape[1:3]
        assert everywhere.all() and positions.sum() == rows * cols and positions[0, :rows, :cols].all()
        np.testing.assert_allclose(on_canvas[0, :rows, :cols], alone[0], rtol=1e-5, atol=1e-5 * np.abs(alone).max())
        if (height, width) != (canvas_side, canvas_side):  # the control: without the mask the border shows
            unmasked, _ = model.apply(variables, canvas, score_map=True)
            assert np.abs(unmasked[0, :rows, :cols] - alone[0]).max() > 1e-4 * np.abs(alone).max()  # 10x the tolerance


def test_the_score_map_of_a_224_image_is_the_forward_pass():
    model = create_model("resnet50", num_classes=10)
    x = jax.random.normal(jax.random.key(0), (2, 224, 224, 3))
    variables = noisy_batch_stats(model.init(jax.random.key(1), x))
    scores, positions = model.apply(variables, x, score_map=True)
    assert scores.shape == (2, 1, 1, 10) and positions.all()
    np.testing.assert_allclose(scores[:, 0, 0], model.apply(variables, x), rtol=1e-5, atol=1e-5)
