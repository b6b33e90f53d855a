"""A description of the machine a benchmark ran on, recorded beside every figure."""

import datetime
import os
import platform

import jax


def describe() -> dict:
    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.date.today().isoformat(),
        "platform": device.platform,
        "device": getattr(device, "device_kind", str(device)),
        "devices": jax.device_count(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
    }
