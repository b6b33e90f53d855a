"""mmpretrain's ResNet recipes, row by row of its ResNet results table: named configs, never the paper's.

    python -m resnet_jax.main --config=configs/mmpretrain.py:cifar10_resnet18 --workdir=workdirs/mm_cifar10_r18
    python -m resnet_jax.main --config=configs/mmpretrain.py:imagenet_resnet50 --workdir=gs://BUCKET/mm_r50

ARG is a row of the table (docs/paper.md, "mmpretrain", which gives each row's published top-1 accuracy):
cifar10_resnet18, _resnet34, _resnet50, _resnet101, _resnet152 (94.82 / 95.34 / 95.55 / 95.58 / 95.76%),
cifar100_resnet50 (79.90%), imagenet_resnet18 .. _resnet152 (69.90 / 73.62 / 76.55 / 77.97 / 78.48%),
imagenet_resnet50_v1d, _resnet101_v1d, _resnet152_v1d (77.54 / 78.93 / 79.41%), imagenet_resnet50_fp16 (76.30%), and
imagenet_resnet50_bf16 (ours: the fp16 row computed in bfloat16; mmpretrain has no bf16 config).

Each value comes from mmpretrain's config files (open-mmlab/mmpretrain at ee7f2e8, configs/resnet/ and
configs/_base_/): CIFAR rows `resnet{D}_8xb16_cifar10.py` on `datasets/cifar10_bs16.py` and
`schedules/cifar10_bs128.py` (8 GPUs x 16: batch 128, BN over 16; SGD lr 0.1, momentum 0.9, weight decay 1e-4;
200 epochs, lr x0.1 at epochs 100 and 150; pad-4 crop with black padding and flip; per-channel mean (125.307,
122.961, 113.8575) and std (51.5865, 50.847, 51.255)); `resnet50_8xb16_cifar100.py` changes weight decay to 5e-4,
the drops to x0.2 at 60, 120 and 160 and the statistics to (129.304, 124.070, 112.434) / (68.170, 65.392, 70.418).
ImageNet rows `resnet{D}_8xb32_in1k.py`, `resnetv1d{D}_8xb32_in1k.py` and `resnet50_8xb32-fp16_in1k.py` on
`datasets/imagenet_bs32.py` and `schedules/imagenet_bs256.py` (8 x 32: batch 256, BN over 32; SGD 0.1, 0.9, 1e-4;
100 epochs, x0.1 at 30, 60 and 90; RandomResizedCrop 224 and flip, no PCA lighting; mean (123.675, 116.28, 103.53),
std (58.395, 57.12, 57.375); tested with the 1-crop view; fp16: a static loss scale of 512). Every net starts its
residual branches' last BN at zero (mmpretrain's zero_init_residual) and puts the bottleneck stride on the 3x3.

Where we differ: SGD runs in PyTorch's momentum form, as there; epochs are steps of the stream (200 CIFAR epochs are
78,125 steps of 128; mmpretrain's last batch of an epoch is partial); convolutions start from the paper's He
initialisation with fan-in (mmpretrain's uses fan-out) and the classifier from Flax's default (mmpretrain's a
normal of std 0.01); the v1d rows resize with OpenCV where mmpretrain uses Pillow. Our CIFAR-10 is the JPEG q75 copy
(README, Data): expect lower accuracy than the table on it.
Hardware: a CIFAR row is ~2.7x the paper's ResNet-110 per step (ResNet-18: 0.56 GMACs per image); an ImageNet row
is the paper's recipe's cost for 100 epochs.
"""

from resnet_jax.data import datasets
from resnet_jax.recipe.config import base_config

IMAGENET_TRAIN = datasets.get("imagenet2012").train_examples

_CIFAR = {  # dataset: (mean, std, weight decay, milestones in epochs, gamma)
    "cifar10": ((125.307, 122.961, 113.8575), (51.5865, 50.847, 51.255), 1e-4, (100, 150), 0.1),
    "cifar100": ((129.304, 124.070, 112.434), (68.170, 65.392, 70.418), 5e-4, (60, 120, 160), 0.2),
}
_IMAGENET_MEAN, _IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)

ROWS = {
    **{f"cifar10_resnet{d}": ("cifar10", f"resnet{d}_cifar") for d in (18, 34, 50, 101, 152)},
    "cifar100_resnet50": ("cifar100", "resnet50_cifar"),
    **{f"imagenet_resnet{d}": ("imagenet2012", f"resnet{d}") for d in (18, 34, 50, 101, 152)},
    **{f"imagenet_resnet{d}_v1d": ("imagenet2012", f"resnet{d}_v1d") for d in (50, 101, 152)},
    "imagenet_resnet50_fp16": ("imagenet2012", "resnet50"),
    "imagenet_resnet50_bf16": ("imagenet2012", "resnet50"),
}


def _steps(epochs: float, examples: int, batch: int) -> int:
    return int(epochs * examples / batch + 0.5)


def _common(c, batch: int, examples: int, epochs: int, milestones, gamma: float):
    c.batch_size, c.num_steps = batch, _steps(epochs, examples, batch)
    c.optimizer.momentum, c.optimizer.momentum_form, c.optimizer.weight_decay_on = 0.9, "common", "all"
    c.schedule.kind, c.schedule.base_lr, c.schedule.factor = "steps", 0.1, gamma
    c.schedule.boundaries = tuple(_steps(m, examples, batch) for m in milestones)
    c.model.zero_init_last_bn = True
    if c.model.name.removesuffix("_cifar").removesuffix("_v1d") in ("resnet50", "resnet101", "resnet152"):
        c.model.stride_on_3x3 = True
    c.data.normalization = "per_channel"


def get_config(arg: str = "cifar10_resnet18"):
    if arg not in ROWS:
        raise ValueError(f"configs/mmpretrain.py:{arg}: unknown row; rows: {', '.join(ROWS)}.")
    dataset, model = ROWS[arg]
    c = base_config(dataset, model)
    if dataset in _CIFAR:
        mean, std, weight_decay, milestones, gamma = _CIFAR[dataset]
        _common(c, 128, datasets.get(dataset).train_examples, 200, milestones, gamma)
        c.model.bn_group_size = 16  # 8 GPUs x 16
        c.optimizer.weight_decay = weight_decay
        c.data.channel_mean, c.data.channel_std, c.data.pad_with = mean, std, "black"
        c.eval.batch_size = 500
        # 78,125 steps: dispatches of 125, a log every 625 steps and an evaluation every 3,125 (8 epochs).
        c.steps_per_dispatch, c.log_every_steps = 125, 625
        c.eval.every_steps = c.checkpoint_every_steps = 3125
    else:
        _common(c, 256, IMAGENET_TRAIN, 100, (30, 60, 90), 0.1)
        c.model.bn_group_size = 32  # 8 GPUs x 32
        c.optimizer.weight_decay = 1e-4
        c.data.channel_mean, c.data.channel_std = _IMAGENET_MEAN, _IMAGENET_STD
        c.data.train_crop, c.data.pca_lighting = "inception", 0.0
        c.eval.split, c.eval.protocol, c.eval.batch_size = "validation", "1crop", 256
        c.eval.every_steps = _steps(1, IMAGENET_TRAIN, 256)
        c.checkpoint_every_steps = c.eval.every_steps // 4
        if arg.endswith("_fp16"):
            c.model.dtype, c.loss_scale = "float16", 512.0
        if arg.endswith("_bf16"):
            c.model.dtype = "bfloat16"
    return c
