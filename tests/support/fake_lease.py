"""A lease whose programs are stand-ins, for cutting it with SIGKILL: `python -m tests.support.fake_lease OUT WORK`.

The real experiments.lease machinery (its agenda, clock, children, streaming of what finished) runs; only the device
kind, the data preparation and the training programs are replaced. The dry run's agenda applies: plain20_seed0, then
resnet20_seed0. The first program writes a finished run after a moment; the second prints a line and then trains
"forever", so that the test can kill the lease in the middle of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from absl import flags

from experiments import lease

_PROGRAM = """
import json, pathlib, sys, time
run = pathlib.Path(sys.argv[1])
print("training", run.name, flush=True)
if run.name.startswith("resnet20"):
    time.sleep(600)
run.mkdir(parents=True, exist_ok=True)
train = {"step": 20, "kind": "train", "loss": 1.0, "error": 0.4, "learning_rate": 0.1, "images_per_sec": 1.0}
evaluation = {"step": 20, "kind": "eval", "top1_error": 0.5, "top5_error": 0.1, "examples": 10000}
(run / "metrics.jsonl").write_text(json.dumps(train) + "\\n" + json.dumps(evaluation) + "\\n")
(run / "checkpoints" / "20").mkdir(parents=True)
(run / "checkpoints" / "20" / "state").write_bytes(b"weights")
record = {"net": "plain20", "members": 1, "finished": True, "step": 20, "seconds_per_step": 0.01, "overhead_s": 1.0}
(run / "program.json").write_text(json.dumps(record))
(run / "result.json").write_text(json.dumps({"top1_error": 0.5}))
print("trained", run.name, flush=True)
"""


def _start_program(self, program, shape):
    self.logs.mkdir(parents=True, exist_ok=True)
    log = open(self.logs / f"{program.run}.log", "a")
    argv = [sys.executable, "-c", _PROGRAM, str(self.runs / program.run)]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def main(out: str, work: str) -> None:
    lease._define_flags()
    flags.FLAGS([sys.argv[0], f"--work={work}", f"--carry={Path(work) / 'carry'}"])
    lease.device_kind = lambda: "fake"
    lease.Lease._prepare_cifar = lambda self: None
    lease.Lease._start_program = _start_program
    lease.Lease(Path(out), budget_s=600, dry_run=True).run()
    print(json.dumps({"ended": True}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
