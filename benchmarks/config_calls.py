"""How often a short training run enters the dataset modules, per phase: the cost of asking for a dataset.

    python -m benchmarks.config_calls --data_dir=workdirs/tfds              # this checkout
    python -m benchmarks.config_calls --data_dir=... --root=/other/checkout  # another one (the phases: whole run)

Trains configs/cifar10.py:resnet20,quick for 2 steps under a profiler and counts the calls that enter each watched
module from outside it (module -> function: count), and how many times tfds opens a dataset builder. With the
`Trainer` of resnet_jax.train.loop the counts are split into its phases: set-up (`__init__`), loop (`run` up to its
end) and end (`_finish`, `_write_results`); older checkouts are counted as one phase.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

WATCHED = ("data/prepared.py", "data/datasets.py", "data/sources.py", "resnet_jax/datasets.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args()
    root = Path(args.root).resolve()
    sys.path.insert(0, str(root))
    os.chdir(root)
    import tensorflow_datasets as tfds

    from configs import cifar10

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    phase = ["run"]

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename.endswith(WATCHED) and str(root) in code.co_filename:
            caller = frame.f_back.f_code.co_filename if frame.f_back else ""
            if caller != code.co_filename and not code.co_name.startswith("<"):
                name = code.co_filename.split("resnet_jax/")[-1]
                counts[phase[0]][f"{name}:{code.co_name}"] += 1

    real_builder = tfds.builder

    def counting_builder(*a, **k):
        counts[phase[0]]["tfds.builder"] += 1
        return real_builder(*a, **k)

    tfds.builder = counting_builder
    config = cifar10.get_config("resnet20,quick")
    config.data.data_dir, config.num_steps, config.steps_per_dispatch = args.data_dir, 2, 1
    config.log_every_steps = config.eval.every_steps = config.checkpoint_every_steps = 2
    try:
        loop = importlib.import_module("resnet_jax.train.loop")
    except ModuleNotFoundError:
        loop = None
    if loop is not None:

        def in_phase(name, method):
            def wrapped(*a, **k):
                previous, phase[0] = phase[0], name
                try:
                    return method(*a, **k)
                finally:
                    phase[0] = previous

            return wrapped

        for name, method in (("set-up", "__init__"), ("loop", "run"), ("end", "_finish"), ("end", "_write_results")):
            setattr(loop.Trainer, method, in_phase(name, getattr(loop.Trainer, method)))
        train = loop.train_and_evaluate
    else:
        train = importlib.import_module("resnet_jax.train").train_and_evaluate
    with tempfile.TemporaryDirectory() as workdir:
        sys.setprofile(profile)
        try:
            train(config, workdir)
        finally:
            sys.setprofile(None)
    for name, counter in counts.items():
        print(json.dumps({"phase": name, "entries": sum(counter.values()), "calls": dict(sorted(counter.items()))}))


if __name__ == "__main__":
    main()
