"""Durable small files: written whole or not at all, and still there after a power cut."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

_CHUNK = 1 << 20


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a private temp file (0600, in a 0700 folder), fsync it,
    rename it into place and fsync the folder: readers never see half a file, and a crash
    after this returns cannot lose it. Temp names start with ``.tmp-`` (sweepable)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.parent / f".tmp-{path.name}-{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            offset = 0
            while offset < len(view):
                offset += os.write(fd, view[offset : offset + _CHUNK])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
