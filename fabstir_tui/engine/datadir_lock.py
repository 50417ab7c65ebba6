"""One node per data dir: two processes on one key would race each other's nonces."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from fabstir_tui.engine.store import StoreError


class DataDirBusyError(StoreError):
    """Another fabstir-tui process runs on this data dir; the message names its PID."""


class DataDirLock:
    """An flock on `<data dir>/node.lock`, held for the node's life; the kernel drops it when
    the process dies, so a crash never leaves a stale lock behind."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Take the lock or say who holds it; the file keeps the holder's PID for that."""
        path = data_dir / "node.lock"
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(
                f"cannot create the data dir {data_dir}: {exc.strerror or exc}; "
                "choose a writable folder with --data-dir or paths.data_dir"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusyError(
                f"another fabstir-tui (pid {holder}) is running on the data dir {data_dir}; "
                "stop it first, or give this one its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Unlock and close; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
