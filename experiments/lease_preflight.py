"""A lease's first seconds: what the machine is, and whether the kit was built for it.

    python3 -m experiments.lease_preflight [--kit=.lease_kit]

Runs before the kit's wheels are installed, so it needs nothing but the standard library and imports no JAX (which
would take the GPU). Prints Python, JAX, jaxlib and the CUDA plugin, the GPU (name, memory, driver) and the CPUs;
then, if the kit's wheels were built for another Python (`kit.json`, written by experiments/lease_kit.py) or JAX is
missing, one line saying so and how to go on, and exit status 2: no device time goes into an install that would fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def machine() -> dict:
    """What this machine is, as far as the lease cares."""
    plugins = {d.metadata["Name"]: d.version for d in metadata.distributions() if "cuda" in d.metadata["Name"].lower()}
    return {
        "python": platform.python_version(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "cuda_packages": dict(sorted(plugins.items())),
        "gpus": _gpus(),
        "cpus": os.cpu_count(),
    }


def mismatch(found: dict, kit: dict) -> str | None:
    """What makes the kit unusable here, in one line with the way on; None if nothing."""
    wanted = kit.get("python")
    here = ".".join(found["python"].split(".")[:2])
    if wanted and here != wanted:
        return (
            f"preflight: Python {here} here, the kit's wheels are for Python {wanted}: rebuild the kit with "
            f"`python -m experiments.lease_kit --python={here}` and run the lease again."
        )
    if found["jax"] is None:
        return "preflight: no JAX on this machine: the lease needs the device image's JAX (the kit does not carry it)."
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kit", default=".lease_kit")
    args = parser.parse_args(argv)
    found = machine()
    print("preflight: " + json.dumps(found), flush=True)
    kit_file = Path(args.kit) / "kit.json"
    if not kit_file.exists():
        print(f"preflight: {kit_file} is missing: build the kit with `python -m experiments.lease_kit`.", flush=True)
        return 2
    problem = mismatch(found, json.loads(kit_file.read_text()))
    if problem:
        print(problem, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
