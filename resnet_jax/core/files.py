"""Writing a file so that a killed process never leaves half of it: write beside it, then rename into place.

A reader (a resumed run, a later session, another host, the device tool collecting a lease's files) then sees the old
file or the new one, never a mix; the rename is atomic on a local filesystem and on object stores (gs://) alike.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from etils import epath


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[epath.Path]:
    """Yields a hidden `.<name>.<pid>.partial` beside `path` to write in any way (a tarfile, a stream); it replaces
    `path` when the block ends, and is removed when the block raises (`path` is then left as it was)."""
    path = epath.Path(path)
    partial = path.parent / f".{path.name}.{os.getpid()}.partial"
    try:
        yield partial
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` (text or bytes) to `path` whole (`replacing`)."""
    with replacing(path) as partial:
        if isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            partial.write_text(data)
