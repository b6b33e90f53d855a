"""Every config that claims a paper setting follows PAPER.md: loaded, validated and built, never run."""

import jax
import jax.numpy as jnp
import pytest

from configs import (cifar10, imagenet, imagenet_modern, imagenet_r18, imagenet_r34, imagenet_r50, imagenet_r101,
                     imagenet_r152, imagenet_table2, imagenet_table3, imagenet_table4)
from resnet_jax.config import model_from_config, validate

CIFAR = [cifar10.get_config(m) for m in cifar10.CIFAR_MODELS]
IMAGENET = ([imagenet_table2.get_config(r) for r in imagenet_table2.ROWS]
            + [imagenet_table3.get_config(r) for r in imagenet_table3.ROWS]
            + [imagenet_table4.get_config(r) for r in imagenet_table4.ROWS]
            + [m.get_config() for m in (imagenet_r18, imagenet_r34, imagenet_r50, imagenet_r101, imagenet_r152)]
            + [imagenet_modern.get_config(v) for v in imagenet_modern.VARIANTS])
ALL = CIFAR + IMAGENET


def _id(config):
    return f"{config.model.name}_{config.model.shortcut}_{config.eval.final_protocol or config.eval.protocol}"


@pytest.mark.parametrize("config", ALL, ids=_id)
def test_config_validates_and_builds(config):
    validate(config)
    size = 32 if config.data.name == "cifar10" else 224
    model = model_from_config(config.model)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, size, size, 3)))[0])
    assert out.shape == (2, config.model.num_classes)


@pytest.mark.parametrize("config", ALL, ids=_id)
def test_common_recipe(config):
    # Sections 3.4 and 4.2: SGD, momentum 0.9, weight decay 1e-4, no dropout, lr 0.1, per-pixel mean, flips.
    assert config.optimizer.momentum == 0.9 and config.optimizer.weight_decay == 1e-4
    assert config.optimizer.momentum_form == "caffe"  # the authors' framework
    assert config.schedule.base_lr == 0.1 and config.schedule.factor == 0.1
    assert config.data.train_crop == "paper" and config.seed == 0
    assert config.bn_recompute_examples == 0 or config.data.name == "imagenet2012"


@pytest.mark.parametrize("config", CIFAR, ids=_id)
def test_cifar_recipe(config):
    assert config.batch_size == 128 and config.model.bn_group_size == 64  # 128 on 2 GPUs
    assert config.num_steps == 64_000 and tuple(config.schedule.boundaries) == (32_000, 48_000)
    assert config.schedule.kind == "steps"
    assert config.model.shortcut == "A" and config.data.pca_lighting == 0
    assert config.eval.protocol == "single" and config.eval.split == "test" and not config.data.holdout_val
    warmup = config.model.name in ("resnet110", "resnet1202")
    assert (config.schedule.warmup_lr == 0.01 and config.schedule.warmup_until_error == 0.8) if warmup \
        else config.schedule.warmup_lr is None
    assert config.schedule.ramp_steps == 0  # the linear warm-up is not the paper's


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
    assert config.batch_size == 256 and config.model.bn_group_size == 32  # 8 GPUs x 32
    assert config.num_steps == 600_000 and config.schedule.kind == "plateau" and config.schedule.ramp_steps == 0
    assert config.data.pca_lighting == 0.1 and config.eval.split == "validation"
    if config.model.name.startswith(("resnet50", "resnet101", "resnet152")):
        assert config.model.shortcut == "B"
    assert config.model.stride_on_3x3 is False or config.model.name.endswith("_v1d")


@pytest.mark.parametrize("row", imagenet_table2.ROWS)
def test_table2_uses_option_a_and_10_crop(row):
    config = imagenet_table2.get_config(row)
    assert config.model.shortcut == "A" and config.eval.final_protocol == "10crop"
    assert config.model.name == row


@pytest.mark.parametrize("row", imagenet_table3.ROWS)
def test_table3_shortcuts_and_10_crop(row):
    config = imagenet_table3.get_config(row)
    assert config.eval.final_protocol == "10crop"
    if row.startswith("resnet34_"):
        assert config.model.shortcut == row[-1]


@pytest.mark.parametrize("row", imagenet_table4.ROWS)
def test_table4_is_table3_tested_multiscale(row):
    config, trained = imagenet_table4.get_config(row), imagenet_table3.get_config(row)
    assert config.eval.final_protocol == "multiscale"
    assert config.model == trained.model and config.schedule == trained.schedule and config.data == trained.data


def test_modern_variants_are_named_options():
    assert imagenet_modern.get_config("resnet50_bf16").model.dtype == "bfloat16"
    assert imagenet.get_config("resnet50").model.dtype == "float32"  # never a silent default
    assert imagenet_modern.get_config("resnet101_v1d").model.name == "resnet101_v1d"
