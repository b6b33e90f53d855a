"""Every config that claims a paper setting follows the paper (docs/paper.md): loaded, validated, built, never run."""

import jax
import jax.numpy as jnp
import pytest

from configs import (
    cifar10,
    imagenet_modern,
    imagenet_r18,
    imagenet_r34,
    imagenet_r50,
    imagenet_r101,
    imagenet_r152,
    imagenet_recipe,
    imagenet_table2,
    imagenet_table3,
    imagenet_table4,
)
from experiments import paper
from resnet_jax.core.errors import ConfigError
from resnet_jax.core.sharding import fitted_batch
from resnet_jax.data import datasets
from resnet_jax.recipe.config import device_count_problem, model_from_config, validate

CIFAR = [cifar10.get_config(m) for m in cifar10.CIFAR_MODELS]
TABLES = {"Table 2": imagenet_table2, "Table 3": imagenet_table3, "Table 4": imagenet_table4}
IMAGENET = (
    [table.get_config(r) for table in TABLES.values() for r in table.ROWS]
    + [m.get_config() for m in (imagenet_r18, imagenet_r34, imagenet_r50, imagenet_r101, imagenet_r152)]
    + [imagenet_modern.get_config(v) for v in imagenet_modern.VARIANTS]
)
ALL = CIFAR + IMAGENET
RECIPES = paper.table("Recipes")


def _recipe(config, key):
    return RECIPES[key][config.data.name]


def _id(config):
    return f"{config.model.name}_{config.model.shortcut}_{config.eval.final_protocol or config.eval.protocol}"


@pytest.mark.parametrize("config", ALL, ids=_id)
def test_config_validates_and_builds(config):
    validate(config)
    model = model_from_config(config.model)
    shape = datasets.get(config.data.name).image_shape
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, *shape)))[0])
    assert out.shape == (2, config.model.num_classes)


@pytest.mark.parametrize("config", ALL, ids=_id)
def test_common_recipe(config):
    # Sections 3.4 and 4.2: SGD, momentum 0.9, weight decay 1e-4, no dropout, lr 0.1, per-pixel mean, flips.
    assert config.optimizer.momentum == _recipe(config, "momentum")
    assert config.optimizer.weight_decay == _recipe(config, "weight_decay")
    assert config.optimizer.momentum_form == "caffe"  # the authors' framework
    assert config.schedule.base_lr == _recipe(config, "base_lr")
    assert config.schedule.factor == _recipe(config, "lr_factor")
    assert config.batch_size == _recipe(config, "batch") and config.model.bn_group_size == _recipe(config, "bn_group")
    assert config.data.pca_lighting == _recipe(config, "pca_lighting")
    assert config.data.train_crop == "paper" and config.seed == 0 and config.runs == 1
    assert config.schedule.ramp_steps == 0  # the linear warm-up is not the paper's


@pytest.mark.parametrize("config", CIFAR, ids=_id)
def test_cifar_recipe(config):
    assert config.num_steps == _recipe(config, "iterations")
    assert list(config.schedule.boundaries) == [int(b) for b in _recipe(config, "boundaries").split(",")]
    assert config.schedule.kind == "steps" and config.bn_statistics == "moving_average"
    assert config.model.shortcut == "A"
    assert config.eval.protocol == "single" and config.eval.split == "test" and not config.data.holdout_val
    assert config.data.on_device  # the stream computed on the devices: the same recipe, faster
    warmup = config.model.name in ("resnet110", "resnet1202")
    assert (
        (
            config.schedule.warmup_lr == _recipe(config, "warmup_lr")
            and config.schedule.warmup_until_error == _recipe(config, "warmup_until_error")
        )
        if warmup
        else config.schedule.warmup_lr is None
    )


def test_cifar_variants():
    assert cifar10.get_config("resnet56,holdout").data.holdout_val
    assert cifar10.get_config("resnet56,holdout").eval.split == "val"
    quick = cifar10.get_config("plain56,quick")
    assert quick.num_steps == 400 and quick.schedule.boundaries == (200, 300) and quick.schedule.ramp_steps == 100
    with pytest.raises(ValueError, match="unknown variants"):
        cifar10.get_config("resnet20,fast")
    with pytest.raises(ValueError, match="model must be one of"):
        cifar10.get_config("resnet50")


@pytest.mark.parametrize("config", IMAGENET, ids=_id)
def test_imagenet_recipe(config):
    assert config.num_steps == _recipe(config, "iterations") and config.schedule.kind == "plateau"
    assert config.eval.split == "validation" and not config.data.on_device
    assert config.schedule.plateau_on == "train_error"  # no decision looks at the reported validation set
    assert config.bn_statistics == "recomputed" and config.bn_recompute_examples >= 50_000  # the authors' release
    if config.model.name.startswith(("resnet50", "resnet101", "resnet152")):
        assert config.model.shortcut == "B"
    assert config.model.stride_on_3x3 is False or config.model.name.endswith("_v1d")


@pytest.mark.parametrize("title", TABLES)
def test_table_rows_are_the_papers_with_its_protocol(title):
    rows = TABLES[title].ROWS
    assert list(rows) == list(paper.table(title))  # the same rows, in the paper's order
    protocol = "multiscale" if title == "Table 4" else "10crop"
    for arg, row in rows.items():
        assert isinstance(row, imagenet_recipe.Row)
        config = TABLES[title].get_config(arg)
        assert (config.model.name, config.model.shortcut, config.eval.final_protocol) == (*row, protocol)
        if title != "Table 2":
            assert row.shortcut == paper.value(title, arg, "shortcut")
    if title == "Table 2":
        assert {row.shortcut for row in rows.values()} == {"A"}


@pytest.mark.parametrize("row", imagenet_table4.ROWS)
def test_table4_is_table3_tested_multiscale(row):
    config, trained = imagenet_table4.get_config(row), imagenet_table3.get_config(row)
    assert config.model == trained.model and config.schedule == trained.schedule and config.data == trained.data


def test_modern_variants_are_named_options():
    assert imagenet_modern.get_config("resnet50_bf16").model.dtype == "bfloat16"
    assert imagenet_r50.get_config().model.dtype == "float32"  # never a silent default
    assert imagenet_modern.get_config("resnet101_v1d").model.name == "resnet101_v1d"


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("schedule.base_lr", -1.0, "base_lr=-1.0 must be positive"),
        ("optimizer.momentum", 1.5, "momentum must be in"),
        ("optimizer.weight_decay", -1e-4, "weight_decay must be >= 0"),
        ("schedule.factor", 2.0, "factor=2.0 must be in"),
        ("model.bn_momentum", 1.0, "bn_momentum must be in"),
        ("keep_checkpoints", 0, "keep_checkpoints must be >= 1"),
        ("steps_per_dispatch", 7, "steps_per_dispatch=7 must divide"),
        ("runs", 0, "runs must be >= 1"),
        ("eval.protocol", "10crop", "cifar10 is tested with one of"),
        ("eval.split", "validation", "eval.split='validation' is not one of"),
    ],
)
def test_bad_values_are_named(key, value, message):
    config = cifar10.get_config("resnet20")
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_several_runs_need_the_data_on_the_devices():
    config = cifar10.get_config("resnet20")
    config.runs, config.data.on_device = 3, False
    with pytest.raises(ConfigError, match="data.on_device=True"):
        validate(config)


def test_every_shipped_config_trains_and_evaluates_on_1_to_64_devices():
    """No devices needed: the set-up's own check of a device count, for every config we ship (mmpretrain's rows
    too). The evaluation batch is fitted to the device count (it changes no result); the training batch is the
    recipe, and where it cannot split, the one-line message names both ways out."""
    from configs import mmpretrain

    shipped = ALL + [mmpretrain.get_config(row) for row in mmpretrain.ROWS]
    for config in shipped:
        for devices in (1, 2, 4, 8, 16, 32, 64):
            assert device_count_problem(config, devices) is None, (config.model.name, devices)
            fitted = fitted_batch(config.eval.batch_size, devices)
            assert fitted % devices == 0 and 0 <= fitted - config.eval.batch_size < devices
    problem = device_count_problem(cifar10.get_config("resnet20"), 256)
    assert problem.startswith("config.batch_size=128 (the recipe's) does not split across the 256 devices")
    assert "(e.g. 128)" in problem and "--config.batch_size=N, N a multiple of 256" in problem
    assert "(e.g. 4)" in device_count_problem(cifar10.get_config("resnet20"), 6)
