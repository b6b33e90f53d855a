"""Writing a file so that a killed process never leaves half of it: write beside it, then rename into place.

A reader (a resumed run, a later session, another host) then sees the old file or the new one, never a mix; the
rename is atomic on a local filesystem and on object stores (gs://) alike.
"""

from __future__ import annotations

import os

from etils import epath


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` (text or bytes) to `path` whole: into a hidden `.<name>.<pid>.partial` beside it, then renamed."""
    path = epath.Path(path)
    partial = path.parent / f".{path.name}.{os.getpid()}.partial"
    if isinstance(data, bytes):
        partial.write_bytes(data)
    else:
        partial.write_text(data)
    partial.replace(path)
