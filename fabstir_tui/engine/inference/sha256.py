"""SHA-256 of a model file (its on-chain id, DESIGN §11.2), chunked, throttled and cancellable."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

ProgressFn = Callable[[int, int], None]

CHUNK_BYTES = 1 << 20
PROGRESS_INTERVAL_S = 0.1


class HashCancelled(Exception):
    """The hash was stopped through its cancel event before it finished."""


def sha256_file(
    path: Path | str,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    interval_s: float = PROGRESS_INTERVAL_S,
) -> str:
    """Hash in fixed chunks so a multi-GB file neither fills RAM nor floods the event bus.

    Blocking: call it on a worker thread. `progress(done, total)` is called at the start, at
    most once per `interval_s` while reading, and at the end. Raises HashCancelled or OSError.
    """
    digest = hashlib.sha256()
    buf = bytearray(max(chunk_bytes, 4096))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        total = os.fstat(f.fileno()).st_size
        done = 0
        if progress is not None:
            progress(0, total)
        last = time.monotonic()
        while True:
            if cancel is not None and cancel.is_set():
                raise HashCancelled(f"hashing {path} was cancelled")
            n = f.readinto(view)
            if not n:
                break
            digest.update(view[:n])
            done += n
            if progress is not None:
                now = time.monotonic()
                if now - last >= interval_s:
                    last = now
                    progress(done, total)
    if progress is not None:
        progress(done, total)
    return digest.hexdigest()
