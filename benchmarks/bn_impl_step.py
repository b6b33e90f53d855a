"""Our CIFAR ResNet-20 train step with XLA's and with oneDNN's training batch norms (`bn_impl`), side by side: what
`bn_impl='auto'` chooses per dtype rests on this.

    python -m benchmarks.bn_impl_step [--dtypes=float32,bfloat16] [--rounds=2] [--steps=8]

Batch 128, the convolutions oneDNN's (`conv_impl='auto'` on a single-device CPU program), the batch norms' statistics
over the whole batch and over groups of 64 (the paper's CIFAR recipe), synthetic images. The two variants alternate,
`--rounds` times; each figure is the best of its round's steps after a warm-up. One JSON line per round (images/s of
each and their ratio), then one with the median ratios and the machine.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from benchmarks.cpu_vs_torch import _best_step_seconds, ours
from resnet_jax.core.machine import describe

FLAGS = flags.FLAGS  # --dtypes, --rounds and --steps: benchmarks.cpu_vs_torch's, whose step this times

BATCH = 128


def main(argv):
    del argv
    summary = {}
    for dtype in FLAGS.dtypes:
        for group in (None, 64):
            steps = {impl: ours("resnet20", {"bn_impl": impl, "bn_group_size": group}, BATCH, "auto", dtype)
                     for impl in ("xla", "onednn")}  # fmt: skip
            ratios = []
            for r in range(FLAGS.rounds):
                row = {impl: round(BATCH / _best_step_seconds(step, FLAGS.steps), 1) for impl, step in steps.items()}
                ratios.append(row["onednn"] / row["xla"])
                fields = {"dtype": dtype, "bn_group_size": group, "round": r, "xla_img_s": row["xla"]}
                fields.update(onednn_img_s=row["onednn"], onednn_over_xla=round(ratios[-1], 3))
                print(json.dumps(fields), flush=True)
            summary[f"{dtype}_group_{group or 'batch'}_onednn_over_xla"] = round(float(np.median(ratios)), 3)
    print(json.dumps({**summary, **describe()}))


if __name__ == "__main__":
    app.run(main)
