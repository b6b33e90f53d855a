"""Runs a command and reports the peak memory of its whole process tree (the command and its grain workers).

    python -m benchmarks.peak_memory [--interval_s=1] -- python -m resnet_jax.main --config=... --workdir=...

The command's own output passes through. Every `--interval_s` the tree is measured: the sum of its processes'
proportional set sizes (PSS: memory shared between processes, such as grain's shared-memory batches, counted once,
split between its sharers; what the kernel's out-of-memory killer weighs) and the largest process's resident set.
The last line is a JSON object with both peaks in GiB, the time each was reached, the exit status and the machine.
A sample sees what is resident at that instant: a peak shorter than the interval can be missed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
from absl import app, flags

from resnet_jax.core.machine import describe

flags.DEFINE_float("interval_s", 1.0, "Seconds between measurements.")
FLAGS = flags.FLAGS


def _tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(sum of PSS, largest RSS) over `root` and its descendants, in bytes; processes that end meanwhile are skipped."""
    pss, largest = 0, 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        pss += getattr(info, "pss", info.rss)
        largest = max(largest, info.rss)
    return pss, largest


def main(argv: list[str]) -> None:
    command = argv[1:]
    if not command:
        raise app.UsageError("Give the command after --: python -m benchmarks.peak_memory -- COMMAND ...")
    started = time.perf_counter()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak = {"tree_pss": (0, 0.0), "largest_rss": (0, 0.0)}
    try:
        while child.poll() is None:
            pss, rss = _tree_memory(root)
            now = time.perf_counter() - started
            if pss > peak["tree_pss"][0]:
                peak["tree_pss"] = (pss, now)
            if rss > peak["largest_rss"][0]:
                peak["largest_rss"] = (rss, now)
            time.sleep(FLAGS.interval_s)
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
    report = {
        "command": " ".join(command),
        "exit_status": child.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        **{f"peak_{name}_gib": round(value / 2**30, 2) for name, (value, _) in peak.items()},
        **{f"peak_{name}_at_s": round(at, 1) for name, (_, at) in peak.items()},
        "total_memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        **describe(),
    }
    print(json.dumps(report), flush=True)
    sys.exit(child.returncode)


if __name__ == "__main__":
    app.run(main)
