"""The data part of a run config (`config.data`), with the paper's settings as defaults."""

from __future__ import annotations

import ml_collections

from resnet_jax.core.errors import ConfigError
from resnet_jax.data import datasets

TRAIN_CROPS = ("paper", "inception")
CORRUPT_POLICIES = ("skip", "fail")
NORMALIZATIONS = ("per_pixel_mean", "per_channel")
PAD_COLOURS = ("mean", "black")


def default_data_config(name: str) -> ml_collections.ConfigDict:
    """Paper settings for dataset `name`; the returned ConfigDict is locked (unknown keys are errors).

    Fields:
      name: a dataset of `resnet_jax.datasets` (tfds names: 'cifar10', 'cifar100', 'imagenet2012').
      data_dir: tfds data directory; None means $TFDS_DATA_DIR or ~/tensorflow_datasets.
      on_device: keep the split in device memory and compute the training stream inside the jitted step
        (`on_device.py`; the small fixed-size datasets, default for them) instead of feeding it with grain.
      holdout_val: CIFAR only: train on the first 45k training examples and make split 'val'
        the last 5k, the split on which the paper chose its schedule.
      train_crop: ImageNet only: 'paper' (shorter side in [256, 480], random 224 crop) or
        'inception' (random-resized crop; not the paper's, never the default).
      pca_lighting: alphastd of the AlexNet PCA colour noise (paper: 0.1 on ImageNet, none on CIFAR).
      normalization: 'per_pixel_mean' (the paper: RGB / 255 minus the per-pixel training mean) or 'per_channel'
        (minus channel_mean, divided by channel_std, both in 0..255 units: other recipes', e.g. mmpretrain's).
      one_crop_side: ImageNet only: the shorter side the '1crop' test view resizes to before its centre 224 crop
        (the paper's 256; torchvision's V2 weights were measured at 232).
      pad_with: the colour CIFAR's 4-pixel padding has: 'mean' (the paper: 0 after the mean is subtracted) or
        'black' (mmpretrain pads the raw image with zeros; needs 'per_channel').
      corrupt_policy: 'fail' (raise, naming the record) or 'skip' (log the record and go on).
      worker_count: grain worker processes decoding in parallel (0: in this process).
      read_threads: threads per worker reading and decoding records (hides storage latency).
      prefetch: batches each worker keeps ready.
      retries: times a failing input pipeline is rebuilt at its last position before the run stops
        (`resilient.py`); each failure of one batch counts, successes in between reset nothing.
      retry_backoff_seconds: wait before the first rebuild, doubled for each further one.
    """
    dataset = datasets.get(name)
    imagenet = dataset.imagenet_like
    cfg = ml_collections.ConfigDict(
        {
            "name": name,
            "data_dir": ml_collections.config_dict.placeholder(str),
            "on_device": dataset.fits_on_device,
            "holdout_val": False,
            "train_crop": "paper",
            "pca_lighting": 0.1 if imagenet else 0.0,
            "normalization": "per_pixel_mean",
            "channel_mean": (0.0, 0.0, 0.0),
            "channel_std": (1.0, 1.0, 1.0),
            "one_crop_side": 256,
            "pad_with": "mean",
            "corrupt_policy": "fail",
            "worker_count": 8 if imagenet else 2,
            "read_threads": 2,
            "prefetch": 2,
            "retries": 3,
            "retry_backoff_seconds": 1.0,
        }
    )
    cfg.lock()
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming any unknown key or unsupported value."""
    if cfg.get("name") not in datasets.DATASETS:
        raise ConfigError(f"data.name={cfg.get('name')!r}; expected one of {tuple(datasets.DATASETS)}.")
    expected = set(default_data_config(cfg.name).keys())
    unknown, missing = set(cfg.keys()) - expected, expected - set(cfg.keys())
    if unknown or missing:
        raise ConfigError(
            f"Data config keys are wrong: unknown {sorted(unknown)}, missing {sorted(missing)}. "
            "Start from resnet_jax.data.default_data_config(name)."
        )
    dataset = datasets.get(cfg.name)
    if cfg.train_crop not in TRAIN_CROPS:
        raise ConfigError(f"data.train_crop={cfg.train_crop!r}; expected one of {TRAIN_CROPS}.")
    if cfg.corrupt_policy not in CORRUPT_POLICIES:
        raise ConfigError(f"data.corrupt_policy={cfg.corrupt_policy!r}; expected one of {CORRUPT_POLICIES}.")
    if cfg.holdout_val and not dataset.holdout:
        raise ConfigError(f"data.holdout_val: {cfg.name} offers no held-out split; evaluate on {dataset.test_split!r}.")
    if not dataset.imagenet_like and (cfg.train_crop != "paper" or cfg.pca_lighting):
        raise ConfigError(
            "data.train_crop and data.pca_lighting are ImageNet augmentations; for CIFAR keep "
            "train_crop='paper' and pca_lighting=0."
        )
    if cfg.on_device and not dataset.fits_on_device:
        raise ConfigError(f"data.on_device: {cfg.name} is too large to keep in device memory; set it to False.")
    if cfg.normalization not in NORMALIZATIONS or cfg.pad_with not in PAD_COLOURS:
        raise ConfigError(f"data.normalization must be one of {NORMALIZATIONS} and data.pad_with one of {PAD_COLOURS}.")
    if cfg.pad_with == "black" and cfg.normalization != "per_channel":
        raise ConfigError(
            "data.pad_with='black' needs data.normalization='per_channel' (a constant colour to pad with)."
        )
    if cfg.one_crop_side < 224:
        raise ConfigError(f"data.one_crop_side={cfg.one_crop_side} must be at least the 224 of the crop.")
    if len(cfg.channel_mean) != 3 or len(cfg.channel_std) != 3 or min(cfg.channel_std) <= 0:
        raise ConfigError("data.channel_mean and data.channel_std need 3 values each, the std positive.")
    if cfg.pca_lighting < 0 or cfg.worker_count < 0 or cfg.read_threads < 0 or cfg.prefetch < 1:
        raise ConfigError("data.pca_lighting, worker_count and read_threads must be >= 0 and prefetch >= 1.")
    if cfg.retries < 0 or cfg.retry_backoff_seconds < 0:
        raise ConfigError("data.retries and data.retry_backoff_seconds must be >= 0.")
