"""Datasets, from the facts about each to the batches a train step takes (see README, "Data").

  datasets.py       what each dataset is: classes, image shape, splits, test protocols (imports nothing heavy)
  options.py        the data part of a run config (`config.data`)
  prepare.py        preparing a dataset once (`python -m resnet_jax.data.prepare`): tfds ArrayRecord + its mean
  prepared.py       `PreparedDataset`: a prepared dataset opened and checked once
  pipeline.py       grain pipelines over it (training, and each test protocol), `resilient.py` healing them
  on_device.py      CIFAR held in device memory, its stream computed inside the step
  feeds.py          where a training dispatch's batches come from (the devices, or grain)

This package's `__init__` imports nothing: `resnet_jax.data.datasets` stays light for the models.
"""
