"""Input pipelines of the paper: tfds ArrayRecord datasets read with grain (see README, "Data").

Prepare a dataset once (`python -m resnet_jax.data.prepare NAME`, or `prepare(NAME)`), then:

  cfg = default_data_config("imagenet2012")
  train = train_iterator(cfg, global_batch_size=256, seed=0)        # endless, resumable
  evals = eval_iterator(cfg, split="validation", protocol="10crop", global_batch_size=256)
  batches = DevicePrefetchIterator(train, mesh)                     # global jax.Arrays

CIFAR can instead stay in device memory, its stream computed inside the step (`on_device.py`, `feeds.py`).
"""

from resnet_jax.data.config import default_data_config
from resnet_jax.data.feeds import DevicePrefetchIterator, put_on_mesh
from resnet_jax.data.pipeline import CorruptRecordError, eval_iterator, train_iterator
from resnet_jax.data.preparation import prepare
from resnet_jax.data.sources import num_examples
from resnet_jax.errors import DatasetMissingError

__all__ = [
    "CorruptRecordError",
    "DatasetMissingError",
    "DevicePrefetchIterator",
    "default_data_config",
    "eval_iterator",
    "num_examples",
    "prepare",
    "put_on_mesh",
    "train_iterator",
]
