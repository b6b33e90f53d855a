"""CIFAR-10, Section 4.2 and Table 6: the 6n+2 nets and their plain counterparts on the paper's recipe.

    python -m resnet_jax.main --config=configs/cifar10.py:resnet110 --workdir=workdirs/cifar10_resnet110

ARG is a CIFAR model name (resnet20/32/44/56/110/1202, plain20/32/44/56/110), optionally followed by ",quick"
(400 iterations, lr rising linearly to 0.1 over the first 100, /10 at 200 and 300: minutes on a CPU, for trying
the code and for the quick depth study; not a paper setting, see the README), ",fraction=F" (the paper's recipe
with every iteration count times F, e.g. 1/8: 8k iterations, lr drops at 4k and 6k, evaluations and checkpoints
every 250; nothing else changed; recorded as config.schedule_fraction, and no table mixes fractions) or
",holdout" (the 45k/5k train/val split on which the paper chose its schedule). Recipe: batch 128 in BN groups of
64 (the paper's 2 GPUs), SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, stop
at 64k; pad-4 random crop and flip, per-pixel mean subtracted; single-view test; BN's moving variance from the
unbiased batch variance (Caffe's). ResNet-110 and 1202 warm up at lr 0.01 until the training error is below 80%.

Paper (Table 6, test error %): ResNet-20 8.75, 32 7.51, 44 7.17, 56 6.97, 110 6.43 (mean 6.61 +- 0.16), 1202 7.93.
Our data is CIFAR-10 re-encoded as JPEG q75 (see README): expect higher absolute errors.
Measured on the JPEG data, final test error (results/cifar10_depth_study/table6.md): plain-20 13.39 +- 0.38% (3
runs), ResNet-20 11.87 +- 0.04% (2 runs), ResNet-56 11.33% (1 run). The training set lives on the devices
(data.on_device) and the loop makes 100 steps per call into them; --config.runs=N trains N seeds in one program.
Hardware: one H100 ran ResNet-56 in 19 minutes on the grain pipeline; this project's 2-core CPU trains ResNet-20 at
about 600 images/s with oneDNN's convolutions (benchmarks/RESULTS.md), so it runs the study at a fraction of the
schedule (",fraction=1/8": about 28 minutes for ResNet-20, 65-75 for the 44-layer nets).
Measured at 1/8 on that CPU, seed 0, final training / test error % (results/cifar10_depth_study_cpu_1of8/table6.md):
plain-20 16.65 / 17.90, plain-32 20.37 / 21.58, plain-44 29.29 / 28.46, plain-56 57.45 / 54.35; ResNet-20 12.87 /
16.11, ResNet-32 12.87 / 15.64, ResNet-44 12.52 / 15.39, ResNet-56 13.66 / 16.91, ResNet-110 11.73 / 15.67 (about
3.1 hours at that CPU's idle pace).
"""

import math
from fractions import Fraction

from resnet_jax.core.errors import ConfigError
from resnet_jax.recipe.config import base_config

DEPTH_STUDY = tuple(f"{kind}{depth}" for kind in ("plain", "resnet") for depth in (20, 32, 44, 56, 110))
"""The nets of Table 6 and Figure 6 that the depth study trains by default (ResNet-1202 only on request)."""
CIFAR_MODELS = (*DEPTH_STUDY, "resnet1202")


def get_config(arg: str = "resnet20"):
    model, *variants = arg.split(",")
    if model not in CIFAR_MODELS:
        raise ConfigError(f"configs/cifar10.py:{arg}: model must be one of {CIFAR_MODELS}.")
    fractions = [v.removeprefix("fraction=") for v in variants if v.startswith("fraction=")]
    variants = [v for v in variants if not v.startswith("fraction=")]
    unknown = set(variants) - {"quick", "holdout"}
    if unknown:
        raise ConfigError(
            f"configs/cifar10.py:{arg}: unknown variants {sorted(unknown)}; use 'quick', 'fraction=F' or 'holdout'."
        )

    c = base_config("cifar10", model)
    c.batch_size = 128
    c.num_steps = 64_000
    c.model.bn_group_size = 64
    c.schedule.kind = "steps"
    c.schedule.base_lr = 0.1
    c.schedule.boundaries = (32_000, 48_000)
    if model in ("resnet110", "resnet1202"):
        c.schedule.warmup_lr = 0.01
    c.eval.split = "test"
    c.eval.protocol = "single"
    c.eval.batch_size = 500
    c.eval.every_steps = 2_000
    c.checkpoint_every_steps = 2_000
    c.steps_per_dispatch = 100  # the data is on the devices (data.on_device): 100 steps per call into them

    if fractions:
        if "quick" in variants or len(fractions) > 1:
            raise ConfigError(f"configs/cifar10.py:{arg}: one fraction=F, without quick (its own schedule).")
        scale_schedule(c, fractions[0], arg)
    if "holdout" in variants:
        c.data.holdout_val = True
        c.eval.split = "val"
    if "quick" in variants:  # the paper's schedule shape (drops at 1/2 and 3/4) in 400 steps, about an epoch
        c.num_steps = 400
        c.schedule.boundaries = (200, 300)
        # At lr 0.1 from the first step ResNet-56 diverges within ~10 steps (as in PyTorch from the same weights,
        # experiments/early_training_vs_pytorch.py) and needs ~1k steps to recover, more than this schedule has.
        c.schedule.ramp_steps = 100
        c.log_every_steps = 25
        c.eval.every_steps = 200
        c.checkpoint_every_steps = 200
        c.steps_per_dispatch = 25
    return c


def scale_schedule(c, fraction: str, arg: str = "") -> None:
    """The paper's schedule with every iteration count times `fraction` ("1/8", "0.125"): the length, the lr drops,
    the evaluation and checkpoint intervals; steps per dispatch the largest divisor of 100 that fits them."""
    try:
        f = Fraction(fraction)
    except (ValueError, ZeroDivisionError):
        f = Fraction(0)
    counts = (c.num_steps, *c.schedule.boundaries, c.eval.every_steps, c.checkpoint_every_steps)
    if not 0 < f <= 1 or any((n * f).denominator != 1 for n in counts):
        raise ConfigError(
            f"configs/cifar10.py:{arg}: fraction={fraction} must be in (0, 1] and give whole iteration counts "
            f"(64k, 32k, 48k, 2k times it): 1/2, 1/4, 1/8, 1/16 ..."
        )
    c.num_steps = int(c.num_steps * f)
    c.schedule.boundaries = tuple(int(b * f) for b in c.schedule.boundaries)
    c.eval.every_steps = int(c.eval.every_steps * f)
    c.checkpoint_every_steps = int(c.checkpoint_every_steps * f)
    c.steps_per_dispatch = math.gcd(c.steps_per_dispatch, c.eval.every_steps, c.checkpoint_every_steps)
    c.schedule_fraction = float(f)
