"""Prepare a dataset once: a tfds ArrayRecord dataset plus its per-pixel training mean.

  python -m resnet_jax.data.prepare cifar10 [--source=PATH] [--data_dir=DIR]
  python -m resnet_jax.data.prepare cifar100 [--source=PATH] [--data_dir=DIR]
  python -m resnet_jax.data.prepare imagenet2012 --source=PATH [--data_dir=DIR]

cifar10 and cifar100 without --source are downloaded and built by tfds' own builders (these
need the network and TensorFlow, whose image encoder they use). Their --source is the original
python tarball (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`), a directory holding it, or
class folders train/<class>/, test/<class>/ (directory or tarball, e.g. the JPEG copy
cifar-10-images-jpg.tar.gz). imagenet2012 --source is a directory of class folders
(train/<wnid>/, val/<wnid>/), or tfds' manual directory with ILSVRC2012_img_{train,val}.tar
(built by tfds' builder, which needs TensorFlow). --data_dir defaults to $TFDS_DATA_DIR or
~/tensorflow_datasets. Running it again reuses what is already there.

(Run this module with -m; code calls `resnet_jax.data.prepare(...)`, the function, which importing
this module would shadow.)
"""

from __future__ import annotations

import argparse

from absl import logging

from resnet_jax import datasets
from resnet_jax.data.preparation import prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.data.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=tuple(datasets.DATASETS))
    parser.add_argument("--source", help="local files to build from (see above)")
    parser.add_argument("--data_dir", help="tfds data directory")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    print(prepare(args.dataset, source=args.source, data_dir=args.data_dir))


if __name__ == "__main__":
    main()
