"""The run config: every key a training run reads, with defaults, and its validation.

Config files in `configs/` start from `base_config()` and change what their paper setting pins. `validate` rejects
unknown or missing keys and bad values by name, so a typo in a config or an override fails before any work starts.
"""

from __future__ import annotations

import ml_collections

from resnet_jax import data, models
from resnet_jax.data.config import validate as validate_data_config

SCHEDULES = ("steps", "plateau")
PROTOCOLS = ("single", "1crop", "10crop", "multiscale")


def base_config(dataset: str, model: str) -> ml_collections.ConfigDict:
    """Defaults shared by every run; `dataset` and `model` pick the data and network defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 256
    c.num_steps = 64_000

    c.model = ml_collections.ConfigDict()
    c.model.name = model
    c.model.num_classes = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}[dataset]
    c.model.shortcut = "A" if models.is_cifar(model) else "B"
    c.model.stride_on_3x3 = False
    c.model.zero_init_last_bn = False
    c.model.dtype = "float32"
    c.model.bn_group_size = 32  # per-GPU BN of the authors' ImageNet runs; None: whole-batch (cross-device) BN
    c.model.bn_momentum = 0.9
    c.model.remat = False  # recompute activations in the backward pass (memory for the deepest nets)

    c.data = data.default_data_config(dataset)
    # Local files to prepare the dataset from if it is missing (see `python -m resnet_jax.data.prepare --help`).
    c.prepare_from = ml_collections.config_dict.placeholder(str)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.momentum_form = "caffe"
    c.optimizer.weight_decay_on = "all"

    c.schedule = ml_collections.ConfigDict()
    c.schedule.kind = "steps"
    c.schedule.base_lr = 0.1
    c.schedule.boundaries = (32_000, 48_000)
    c.schedule.factor = 0.1
    c.schedule.warmup_lr = ml_collections.config_dict.placeholder(float)
    c.schedule.warmup_until_error = 0.8
    c.schedule.ramp_steps = 0  # linear warm-up (Goyal et al.), not the paper's: only the quick CIFAR schedule uses it
    c.schedule.plateau_patience = 3
    c.schedule.plateau_min_delta = 0.001
    c.schedule.plateau_max_drops = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"
    c.eval.protocol = "single"  # periodic evaluation
    c.eval.final_protocol = ml_collections.config_dict.placeholder(str)  # the table's protocol, run once at the end
    c.eval.batch_size = 256
    c.eval.every_steps = 2_000

    c.log_every_steps = 100
    c.checkpoint_every_steps = 2_000
    c.keep_checkpoints = 3

    # After training, replace the BN moving averages by a plain average over this many training examples, as the
    # authors' released models did (0: keep the moving averages).
    c.bn_recompute_examples = 0
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first unknown or missing key, or bad value."""
    reference = base_config(config.data.name, config.model.name)
    _same_keys(config, reference, "config")
    validate_data_config(config.data)
    if config.model.name not in models.MODEL_NAMES:
        raise ValueError(f"config.model.name={config.model.name!r}; valid names: {', '.join(models.MODEL_NAMES)}.")
    checks = [
        (config.schedule.kind in SCHEDULES, f"config.schedule.kind must be one of {SCHEDULES}"),
        (config.eval.protocol in PROTOCOLS, f"config.eval.protocol must be one of {PROTOCOLS}"),
        (config.eval.final_protocol in (None, *PROTOCOLS), f"config.eval.final_protocol must be one of {PROTOCOLS}"),
        (models.is_cifar(config.model.name) == (config.data.name != "imagenet2012"),
         f"config.model.name={config.model.name!r} does not fit data.name={config.data.name!r} (CIFAR nets take "
         "32x32 CIFAR images, ImageNet nets 224x224 ImageNet images)"),
        (all((p == "single") == (config.data.name != "imagenet2012")
             for p in (config.eval.protocol, config.eval.final_protocol or config.eval.protocol)),
         "config.eval.protocol: 'single' is the CIFAR protocol; ImageNet uses '1crop', '10crop' or 'multiscale'"),
        (config.batch_size > 0 and config.num_steps > 0 and config.eval.batch_size > 0,
         "config.batch_size, config.num_steps and config.eval.batch_size must be positive"),
        (config.model.bn_group_size is None or config.batch_size % config.model.bn_group_size == 0,
         f"config.batch_size={config.batch_size} must be a multiple of config.model.bn_group_size="
         f"{config.model.bn_group_size}"),
        (config.schedule.ramp_steps >= 0, "config.schedule.ramp_steps must be >= 0 (0: no linear warm-up)"),
        (list(config.schedule.boundaries) == sorted(config.schedule.boundaries),
         "config.schedule.boundaries must be increasing"),
        (config.log_every_steps > 0 and config.checkpoint_every_steps > 0 and config.eval.every_steps > 0,
         "config.log_every_steps, checkpoint_every_steps and eval.every_steps must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message + ".")
    models.create_model(config.model.name, **_model_options(config.model))  # validates the model options


def model_from_config(model_config: ml_collections.ConfigDict) -> models.ResNet:
    return models.create_model(model_config.name, **_model_options(model_config))


def _model_options(model_config: ml_collections.ConfigDict) -> dict:
    return {k: v for k, v in model_config.items() if k != "name"}


def _same_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, where: str) -> None:
    unknown = sorted(set(config.keys()) - set(reference.keys()))
    missing = sorted(set(reference.keys()) - set(config.keys()))
    if unknown or missing:
        raise ValueError(f"{where} has unknown keys {[f'{where}.{k}' for k in unknown]} and misses "
                         f"{[f'{where}.{k}' for k in missing]}; see resnet_jax/config.py for every key.")
    for key, value in reference.items():
        if isinstance(value, ml_collections.ConfigDict) and key != "data":
            _same_keys(config[key], value, f"{where}.{key}")
