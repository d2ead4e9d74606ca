"""Atomic, durable writes: write a temporary file beside the target, fsync it, rename it over
the target, fsync the directory."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A temporary path beside `path` to write to; renamed over `path` if the block succeeds.

    Readers see the old file or the complete new one, never a partial write, and once the block
    returns the new file survives a crash or power loss (its data and the rename are on disk).
    The file gets the mode an ordinary `open` gives (0o666 less the umask: group-readable under
    umask 022 or 002), not tempfile's private 0o600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # another writer drew the same name: draw again
            continue
    try:
        yield str(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
