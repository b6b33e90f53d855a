"""The run config: every key a training run reads, with defaults, and its validation.

Config files in `configs/` start from `base_config()` and change what their paper setting pins. `validate` rejects
unknown or missing keys and bad values by name, so a typo in a config or an override fails before any work starts.
"""

from __future__ import annotations

import ml_collections

from resnet_jax import models, pretrained
from resnet_jax.core.errors import ConfigError
from resnet_jax.data import datasets
from resnet_jax.data.options import default_data_config
from resnet_jax.data.options import validate as validate_data_config
from resnet_jax.pretrained import STRUCTURAL
from resnet_jax.recipe.members import Members

LOOPS = ("auto", "scan", "host")  # config.dispatch_loop (resnet_jax.train.step.make_dispatch)

SCHEDULES = ("steps", "plateau")
PLATEAU_SIGNALS = ("train_error", "validation_error")
BN_STATISTICS = ("moving_average", "recomputed")


BEFORE_THE_KEY = {("model", "bn_unbiased_var"): False, ("model", "bn_impl"): "xla"}
"""What a run started before a key existed computed, where the key's default says otherwise: the value its
config.json, which lacks the key, stands for (every other key added since takes its default)."""


def base_config(dataset: str, model: str) -> ml_collections.ConfigDict:
    """Defaults shared by every run; `dataset` and `model` pick the data and network defaults."""
    facts, net = datasets.get(dataset), models.spec(model)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 256
    c.num_steps = 64_000
    # The fraction of its paper schedule a config runs (configs/cifar10.py's `fraction=F` scales every iteration
    # count): recorded so that no table or figure mixes runs of different fractions; 1: the paper's schedule.
    c.schedule_fraction = 1.0
    # Independent runs trained together in one program, seeds seed .. seed + runs - 1 (needs data.on_device).
    c.runs = 1
    # How the runs share the program (recipe/members.py): "vmap" (batched, for accelerators), "unrolled" (one
    # after the other, for XLA:CPU), "auto" (by the backend). The runs' results are the same either way.
    c.multi_run = "auto"
    # Training steps per call into the devices; it must divide the log, evaluation and checkpoint intervals, which
    # are therefore also the granularity of every decision taken on the host (warm-up by training error, plateaus,
    # preemption).
    c.steps_per_dispatch = 1
    # How a dispatch runs its steps: "scan" (one lax.scan), "host" (one call per step), "auto" (scan, but step by step
    # where XLA:CPU computes the convolutions: their gradients are slow inside loop bodies). The same steps either way.
    c.dispatch_loop = "auto"

    c.model = ml_collections.ConfigDict()
    c.model.name = model
    c.model.num_classes = facts.num_classes
    c.model.shortcut = net.default("shortcut")
    c.model.stride_on_3x3 = net.default("stride_on_3x3")
    c.model.zero_init_last_bn = False
    c.model.dtype = "float32"
    c.model.bn_group_size = 32  # per-GPU BN of the authors' ImageNet runs; None: whole-batch (cross-device) BN
    c.model.bn_momentum = 0.9
    # The moving variance from the unbiased batch variance, as Caffe (the authors' release) and PyTorch; False: Flax's.
    c.model.bn_unbiased_var = True
    c.model.remat = False  # recompute activations in the backward pass (memory for the deepest nets)
    # How convolutions are computed (resnet_jax/kernels/conv.py): "auto" (oneDNN's on a single-device CPU program, XLA's
    # elsewhere), "xla", "onednn". The same results within float32 rounding; a resumed run may change it.
    c.model.conv_impl = "auto"
    # How training's batch norms are computed (resnet_jax/kernels/batch_norm.py), with the same values and rule.
    c.model.bn_impl = "auto"

    # Published weights MODEL:TAG the run starts from (resnet_jax.pretrained; a head of another width is freshly
    # initialised): not the paper's, which trains from He init (None). Needs the weights' input normalisation.
    c.init_from = ml_collections.config_dict.placeholder(str)

    c.data = default_data_config(dataset)
    # Local files to prepare the dataset from if it is missing (see `python -m resnet_jax.data.prepare --help`).
    c.prepare_from = ml_collections.config_dict.placeholder(str)

    # Static loss scaling for float16 compute (model.dtype): the loss is multiplied by it before the backward pass and
    # the gradients divided after (mmpretrain's fp16 recipe: 512). 1: none, as float32 and bfloat16 need.
    c.loss_scale = 1.0

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
    # What "the error plateaus" watches: "train_error" (the loop's own, over each evaluation interval; never
    # reported) or "validation_error" (the periodic evaluation's, which is then also what is reported).
    c.schedule.plateau_on = "train_error"
    c.schedule.plateau_patience = 3
    c.schedule.plateau_min_delta = 0.001
    c.schedule.plateau_max_drops = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.split = facts.test_split
    c.eval.protocol = facts.protocols[0]  # periodic evaluation
    c.eval.final_protocol = ml_collections.config_dict.placeholder(str)  # the table's protocol, run once at the end
    c.eval.batch_size = 256
    c.eval.every_steps = 2_000

    c.log_every_steps = 100
    c.checkpoint_every_steps = 2_000
    c.keep_checkpoints = 3

    # The BN statistics of the final model: "moving_average" (kept during training), or "recomputed" after training as
    # a plain average over bn_recompute_examples training images, as the authors' released ImageNet models were.
    c.bn_statistics = "moving_average"
    c.bn_recompute_examples = 0
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first unknown or missing key, or bad value."""
    validate_data_config(config.data)
    if config.model.name not in models.MODEL_NAMES:
        raise ConfigError(f"config.model.name={config.model.name!r}; valid names: {', '.join(models.MODEL_NAMES)}.")
    reference = base_config(config.data.name, config.model.name)
    _same_keys(config, reference, "config")
    dataset = datasets.get(config.data.name)
    m, o, s, e = config.model, config.optimizer, config.schedule, config.eval
    k = config.steps_per_dispatch
    members = Members.from_config(config)  # checks runs and multi_run
    input_shape = models.spec(m.name).input_shape
    checks = [
        (
            input_shape == dataset.image_shape,
            f"config.model.name={m.name!r} takes {input_shape} images, but data.name={dataset.name!r} "
            f"has {dataset.image_shape}",
        ),
        (
            m.num_classes == dataset.num_classes,
            f"config.model.num_classes={m.num_classes}, but {dataset.name} has {dataset.num_classes} classes",
        ),
        (
            e.protocol in dataset.protocols,
            f"config.eval.protocol={e.protocol!r}: {dataset.name} is tested with one of {dataset.protocols}",
        ),
        (
            e.final_protocol in (None, *dataset.protocols),
            f"config.eval.final_protocol={e.final_protocol!r}: "
            f"{dataset.name} is tested with one of {dataset.protocols}",
        ),
        (
            e.split in dataset.split_names(config.data.holdout_val),
            f"config.eval.split={e.split!r} is not one of {dataset.split_names(config.data.holdout_val)}",
        ),
        (config.seed >= 0, "config.seed must be >= 0"),
        (0 < config.schedule_fraction <= 1, "config.schedule_fraction must be in (0, 1]"),
        (
            config.batch_size > 0 and config.num_steps > 0 and e.batch_size > 0,
            "config.batch_size, config.num_steps and config.eval.batch_size must be positive",
        ),
        (
            members.single or config.data.on_device,
            "config.runs > 1 trains the runs in one program, each with its own "
            "data order, which needs the data on the devices: set config.data.on_device=True",
        ),
        (k >= 1, "config.steps_per_dispatch must be >= 1"),
        (config.dispatch_loop in LOOPS, f"config.dispatch_loop must be one of {LOOPS}"),
        (
            all(
                n % k == 0
                for n in (config.num_steps, config.log_every_steps, e.every_steps, config.checkpoint_every_steps)
            ),
            f"config.steps_per_dispatch={k} must divide config.num_steps, log_every_steps, eval.every_steps and "
            "checkpoint_every_steps",
        ),
        (
            m.bn_group_size is None or (m.bn_group_size > 0 and config.batch_size % m.bn_group_size == 0),
            f"config.batch_size={config.batch_size} must be a multiple of config.model.bn_group_size={m.bn_group_size}",
        ),
        (0 <= m.bn_momentum < 1, "config.model.bn_momentum must be in [0, 1)"),
        (0 <= o.momentum < 1, "config.optimizer.momentum must be in [0, 1)"),
        (o.weight_decay >= 0, "config.optimizer.weight_decay must be >= 0"),
        (s.kind in SCHEDULES, f"config.schedule.kind must be one of {SCHEDULES}"),
        (s.base_lr > 0, f"config.schedule.base_lr={s.base_lr} must be positive"),
        (0 < s.factor <= 1, f"config.schedule.factor={s.factor} must be in (0, 1]"),
        (
            list(s.boundaries) == sorted(s.boundaries) and all(b > 0 for b in s.boundaries),
            "config.schedule.boundaries must be positive and increasing",
        ),
        (s.warmup_lr is None or s.warmup_lr > 0, "config.schedule.warmup_lr must be positive (or None: no warm-up)"),
        (0 < s.warmup_until_error <= 1, "config.schedule.warmup_until_error must be in (0, 1]"),
        (s.ramp_steps >= 0, "config.schedule.ramp_steps must be >= 0 (0: no linear warm-up)"),
        (
            s.plateau_patience >= 1 and s.plateau_min_delta >= 0 and s.plateau_max_drops >= 0,
            "config.schedule.plateau_patience must be >= 1, plateau_min_delta and plateau_max_drops >= 0",
        ),
        (
            config.log_every_steps > 0 and config.checkpoint_every_steps > 0 and e.every_steps > 0,
            "config.log_every_steps, checkpoint_every_steps and eval.every_steps must be positive",
        ),
        (config.keep_checkpoints >= 1, "config.keep_checkpoints must be >= 1"),
        (config.loss_scale > 0, "config.loss_scale must be positive (1: no scaling)"),
        (config.bn_statistics in BN_STATISTICS, f"config.bn_statistics must be one of {BN_STATISTICS}"),
        (
            (config.bn_recompute_examples > 0) == (config.bn_statistics == "recomputed"),
            "config.bn_recompute_examples must be positive with bn_statistics='recomputed' and 0 otherwise",
        ),
        (s.plateau_on in PLATEAU_SIGNALS, f"config.schedule.plateau_on must be one of {PLATEAU_SIGNALS}"),
        (
            config.num_steps * config.batch_size < 2**31 or not config.data.on_device,
            "config.num_steps * batch_size must stay below 2**31 with data.on_device (the stream position is int32)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message + ".")
    try:
        models.create_model(m.name, **_model_options(m))
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from error
    if config.init_from is not None:
        _check_init_from(config)


def _check_init_from(config: ml_collections.ConfigDict) -> None:
    """The weights of `init_from` fit the run: its net, the options they were trained with, their normalisation."""
    entry = pretrained.parse(config.init_from)
    m, d = config.model, config.data
    wanted = {"model.name": entry.model}
    wanted.update({f"model.{k}": v for k, v in pretrained.structural_options(entry).items()})
    wanted.update(
        {
            "data.normalization": "per_channel",
            "data.channel_mean": tuple(entry.mean),
            "data.channel_std": tuple(entry.std),
        }
    )
    have = {"model.name": m.name, **{f"model.{k}": m[k] for k in STRUCTURAL}}
    have.update({"data.normalization": d.normalization, "data.channel_mean": tuple(d.channel_mean)})
    have["data.channel_std"] = tuple(d.channel_std)
    wrong = {k: v for k, v in wanted.items() if have[k] != v}
    if wrong:
        raise ConfigError(
            f"config.init_from={config.init_from!r} needs the net and the input its weights were trained with; set "
            + " ".join(f"--config.{k}={_flag_value(v)}" for k, v in wrong.items())
            + "."
        )


def device_count_problem(config: ml_collections.ConfigDict, devices: int) -> str | None:
    """Why `config` cannot train on `devices` devices, in one line with both ways out; None if it can. The training
    batch is the recipe (the evaluation batch is fitted to any device count by the evaluators)."""
    batch = config.batch_size
    if batch % devices == 0:
        return None
    fewer = max(d for d in range(1, devices) if batch % d == 0)
    return (
        f"config.batch_size={batch} (the recipe's) does not split across the {devices} devices: run on a number of "
        f"devices that divides it (e.g. {fewer}), or override it with --config.batch_size=N, N a multiple of "
        f"{devices} (a change from the recipe, which config.json records)."
    )


def _flag_value(value) -> str:
    return ",".join(str(v) for v in value).join("()") if isinstance(value, tuple) else str(value)


def model_from_config(model_config: ml_collections.ConfigDict) -> models.ResNet:
    return models.create_model(model_config.name, **_model_options(model_config))


def _model_options(model_config: ml_collections.ConfigDict) -> dict:
    return {k: v for k, v in model_config.items() if k != "name"}


def _same_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, where: str) -> None:
    unknown = sorted(set(config.keys()) - set(reference.keys()))
    missing = sorted(set(reference.keys()) - set(config.keys()))
    if unknown or missing:
        raise ConfigError(
            f"{where} has unknown keys {[f'{where}.{k}' for k in unknown]} and misses "
            f"{[f'{where}.{k}' for k in missing]}; see resnet_jax/recipe/config.py for every key."
        )
    for key, value in reference.items():
        if isinstance(value, ml_collections.ConfigDict) and key != "data":
            _same_keys(config[key], value, f"{where}.{key}")
