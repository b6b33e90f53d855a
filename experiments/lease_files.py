"""What comes back from a GPU lease: at most `MAX_FILES` files of at most `MAX_FILE` bytes each (the device tool's
limits on `$OUT`). An archive bigger than that is cut into `<name>.0`, `<name>.1`, ... on the lease machine
(`split`) and joined again here (`joined`)."""

from __future__ import annotations

import json
from pathlib import Path

from experiments import lease_plan as plan

# The repository root: the lease's targets are its results/ and benchmarks/RESULTS.md, and its programs run here.
REPO = Path(__file__).resolve().parents[1]
MAX_FILE = 16 * 2**20
MAX_FILES = 8


def split(path: Path) -> list[Path]:
    """`path` as is when at most MAX_FILE bytes, else cut into `<name>.<k>` parts of at most MAX_FILE bytes."""
    data = path.read_bytes()
    if len(data) <= MAX_FILE:
        return [path]
    path.unlink()
    parts = []
    for k in range(plan.split_into_parts(len(data), MAX_FILE)):
        part = path.with_name(f"{path.name}.{k}")
        part.write_bytes(data[k * MAX_FILE : (k + 1) * MAX_FILE])
        parts.append(part)
    return parts


def joined(folder: Path, name: str) -> bytes | None:
    """The bytes of `name` in `folder`, whole or from its parts; None if absent."""
    if (folder / name).exists():
        return (folder / name).read_bytes()
    parts = sorted(folder.glob(f"{name}.*"), key=lambda p: int(p.suffix[1:]))
    return b"".join(p.read_bytes() for p in parts) if parts else None


def read_json(path: Path) -> dict | None:
    """A record that may be absent (a lease cut before it wrote it): its contents, else None."""
    return json.loads(path.read_text()) if path.exists() else None
