"""The data part of a run config (`config.data`), with the paper's settings as defaults."""

from __future__ import annotations

import ml_collections

DATASETS = ("cifar10", "cifar100", "imagenet2012")
TRAIN_CROPS = ("paper", "inception")
CORRUPT_POLICIES = ("skip", "fail")


def default_data_config(name: str) -> ml_collections.ConfigDict:
    """Paper settings for dataset `name`; the returned ConfigDict is locked (unknown keys are errors).

    Fields:
      name: 'cifar10' | 'cifar100' | 'imagenet2012' (tfds names).
      data_dir: tfds data directory; None means $TFDS_DATA_DIR or ~/tensorflow_datasets.
      holdout_val: CIFAR only: train on the first 45k training examples and make split 'val'
        the last 5k, the split on which the paper chose its schedule.
      train_crop: ImageNet only: 'paper' (shorter side in [256, 480], random 224 crop) or
        'inception' (random-resized crop; not the paper's, never the default).
      pca_lighting: alphastd of the AlexNet PCA colour noise (paper: 0.1 on ImageNet, none on CIFAR).
      corrupt_policy: 'fail' (raise, naming the record) or 'skip' (log the record and go on).
      worker_count: grain worker processes decoding in parallel (0: in this process).
      read_threads: threads per worker reading and decoding records (hides storage latency).
      prefetch: batches each worker keeps ready.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {DATASETS}.")
    imagenet = name == "imagenet2012"
    cfg = ml_collections.ConfigDict(
        {
            "name": name,
            "data_dir": ml_collections.config_dict.placeholder(str),
            "holdout_val": False,
            "train_crop": "paper",
            "pca_lighting": 0.1 if imagenet else 0.0,
            "corrupt_policy": "fail",
            "worker_count": 8 if imagenet else 2,
            "read_threads": 2,
            "prefetch": 2,
        }
    )
    cfg.lock()
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming any unknown key or unsupported value."""
    expected = set(default_data_config("cifar10").keys())
    unknown, missing = set(cfg.keys()) - expected, expected - set(cfg.keys())
    if unknown or missing:
        raise ValueError(
            f"Data config keys are wrong: unknown {sorted(unknown)}, missing {sorted(missing)}. "
            "Start from resnet_jax.data.default_data_config(name)."
        )
    if cfg.name not in DATASETS:
        raise ValueError(f"data.name={cfg.name!r}; expected one of {DATASETS}.")
    if cfg.train_crop not in TRAIN_CROPS:
        raise ValueError(f"data.train_crop={cfg.train_crop!r}; expected one of {TRAIN_CROPS}.")
    if cfg.corrupt_policy not in CORRUPT_POLICIES:
        raise ValueError(f"data.corrupt_policy={cfg.corrupt_policy!r}; expected one of {CORRUPT_POLICIES}.")
    imagenet = cfg.name == "imagenet2012"
    if imagenet and cfg.holdout_val:
        raise ValueError("data.holdout_val is the CIFAR 45k/5k split; ImageNet has 'validation'.")
    if not imagenet and (cfg.train_crop != "paper" or cfg.pca_lighting):
        raise ValueError(
            "data.train_crop and data.pca_lighting are ImageNet augmentations; for CIFAR keep "
            "train_crop='paper' and pca_lighting=0."
        )
    if cfg.pca_lighting < 0 or cfg.worker_count < 0 or cfg.read_threads < 0 or cfg.prefetch < 1:
        raise ValueError("data.pca_lighting, worker_count and read_threads must be >= 0 and prefetch >= 1.")
