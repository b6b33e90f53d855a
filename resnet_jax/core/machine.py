"""A description of the machine a benchmark or a stretch of a run ran on, recorded beside every figure: runs of
hours cross machines (a batch job resumed elsewhere), and speeds and bits differ between them."""

import datetime
import os
import platform

import jax


def describe() -> dict:
    """The date, JAX's first device and count, the CPU's model name and cores, and JAX's version."""
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


def run_machine() -> str:
    """One line naming the machine a stretch of a run computes on: its devices and, for the CPU, its model."""
    d = describe()
    return f"{d['devices']} x {d['device']} ({d['platform']}), host CPU {d['cpu']} with {d['cpu_cores']} cores"


def available_memory() -> int:
    """Bytes of host memory available to a new allocation now (Linux's MemAvailable; elsewhere the free pages)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
