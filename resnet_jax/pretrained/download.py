"""A published weight file, fetched once into a cache, verified against its hash, and then reused offline.

Where it comes from: `$RESNET_JAX_WEIGHTS_MIRROR` when set (a folder, or an http(s):// base URL, holding the files
under their published names: for air-gapped clusters), otherwise the publisher's URL. Where it goes:
`cache_dir`, else `$RESNET_JAX_CACHE`, else `~/.cache/resnet_jax/weights`. A download is written beside its final
name and renamed into place only after its SHA-256 checks, so a cut connection, a truncated or a wrong file never
stays in the cache. Where only a prefix of the hash is published (torchvision, mmpretrain: `torch.hub`'s
convention), the whole digest of the first good download is pinned beside the file (`<file>.sha256`) and every later
use checks against it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from absl import logging

from resnet_jax.core.errors import WeightsError
from resnet_jax.core.files import replacing, write_atomically
from resnet_jax.pretrained.registry import Weights

CACHE_ENV, MIRROR_ENV = "RESNET_JAX_CACHE", "RESNET_JAX_WEIGHTS_MIRROR"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_PROGRESS_EVERY_S = 5.0


def cache_dir(given: str | os.PathLike | None = None) -> Path:
    """The weights cache: `given`, else $RESNET_JAX_CACHE, else ~/.cache/resnet_jax/weights."""
    return Path(given or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "resnet_jax" / "weights").expanduser()


def source_of(entry: Weights) -> str:
    """Where `entry`'s file is fetched from: the mirror's copy when $RESNET_JAX_WEIGHTS_MIRROR is set."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return entry.url
    return f"{mirror.rstrip('/')}/{entry.file_name}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _pinned(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _expected(entry: Weights, path: Path) -> str:
    """The digest `path` must have: the entry's full one, or the one pinned at its first download, or the prefix."""
    if entry.full_hash:
        return entry.sha256
    pin = _pinned(path)
    return pin.read_text().strip() if pin.exists() else entry.sha256


def _hash_matches(digest: str, expected: str) -> bool:
    return digest == expected if len(expected) == 64 else digest.startswith(expected)


def fetch(entry: Weights, cache: str | os.PathLike | None = None) -> Path:
    """The path of `entry`'s verified file in the cache, downloading it first if it is not there.

    Raises:
      WeightsError: it cannot be downloaded (no network, no such file on the mirror), or what came is truncated or
        has another hash; the message says where to put the file by hand. Nothing is left in the cache then.
    """
    folder = cache_dir(cache)
    path = folder / entry.file_name
    if path.exists():
        digest = sha256_of(path)
        if _hash_matches(digest, _expected(entry, path)):
            return path
        logging.warning(
            "%s in the cache has SHA-256 %s, not %s: removed, fetching it again.", path, digest, entry.sha256
        )
        path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    source = source_of(entry)
    with replacing(path) as partial:  # the cache holds a verified file or none: never a half or a wrong one
        _copy(source, partial, entry)
        digest = sha256_of(partial)
        if not _hash_matches(digest, entry.sha256):
            raise WeightsError(
                f"{source} has SHA-256 {digest}, but {entry.name} is published with {entry.sha256}: a wrong or damaged "
                f"file, not kept. {_by_hand(entry, path)}"
            )
    if not entry.full_hash:
        write_atomically(_pinned(path), digest + "\n")
    logging.info("%s: %s (SHA-256 %s)", entry.name, path, digest)
    return path


def _by_hand(entry: Weights, path: Path) -> str:
    return (
        f"To place it by hand, download {entry.url} to {path}, or point ${MIRROR_ENV} at a folder or http:// server "
        f"holding {entry.file_name}."
    )


def _copy(source: str, destination: Path, entry: Weights) -> None:
    """Copies `source` (a URL, or a path for a folder mirror) to `destination`, with a progress line; WeightsError
    for a source that cannot be read or that ends before its announced length."""
    if "://" not in source or source.startswith("file://"):
        local = Path(source.removeprefix("file://"))
        if not local.is_file():
            raise WeightsError(f"The mirror has no {entry.file_name} ({local} is not a file). {_by_hand(entry, local)}")
        shutil.copyfile(local, destination)
        return
    logging.info("Downloading %s from %s", entry.name, source)
    try:
        with urllib.request.urlopen(source, timeout=_TIMEOUT_S) as response, open(destination, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, last = 0, time.monotonic()
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if time.monotonic() - last > _PROGRESS_EVERY_S:
                    last = time.monotonic()
                    logging.info("%s: %.1f of %.1f MB", entry.file_name, done / 1e6, total / 1e6)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        by_hand = _by_hand(entry, destination.parent / entry.file_name)
        raise WeightsError(f"Could not download {entry.name} from {source}: {reason}. {by_hand}") from None
    if total and done != total:
        raise WeightsError(
            f"The download of {entry.name} from {source} ended after {done} of {total} bytes: not kept. "
            f"{_by_hand(entry, destination.parent / entry.file_name)}"
        )
