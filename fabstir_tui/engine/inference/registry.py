"""The model registry: which GGUF files are on disk, what they are, and their SHA-256 ids."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from fabstir_tui.engine.events import (
    Event,
    EventBus,
    LogLevel,
    LogRecorded,
    ModelHashed,
    ModelHashProgress,
    ModelInfo,
    ModelsScanned,
)
from fabstir_tui.engine.inference.gguf_errors import (
    GgufError,
    GgufFileError,
    check_regular_file,
    gguf_file_error,
)
from fabstir_tui.engine.inference.gguf_meta import GgufInfo, read_gguf
from fabstir_tui.engine.inference.sha256 import HashCancelled, sha256_file
from fabstir_tui.engine.store import Store

LOG_SOURCE = "models"

_Stamp = tuple[str, int, int]


def model_key(path: Path | str) -> str:
    """Absolute and symlink-free, as the model manager keys loaded models."""
    return str(Path(path).expanduser().resolve())


def _stamp(info: ModelInfo) -> _Stamp:
    return (info.path, info.size_bytes, info.mtime_ns)


def _info_from_header(key: str, st: os.stat_result, header: GgufInfo) -> ModelInfo:
    return ModelInfo(
        path=key,
        name=header.name,
        size_bytes=st.st_size,
        mtime_ns=st.st_mtime_ns,
        architecture=header.architecture,
        parameters=header.parameters,
        quantisation=header.quantisation,
        context_length=header.context_length,
        has_chat_template=header.has_chat_template,
    )


class ModelRegistry:
    """Scans model folders; hashes new files one at a time on a background thread.

    All public methods are thread-safe. `scan` and `inspect` block on file I/O (header reads
    only), so the engine calls them through `asyncio.to_thread` or at start-up.
    """

    def __init__(self, dirs: Sequence[Path], store: Store | None, bus: EventBus) -> None:
        """`store` caches hashes across runs; None (doctor) means no cache."""
        self._dirs = [Path(d) for d in dirs]
        self._store = store
        self._bus = bus
        self._lock = threading.Lock()
        self._models: dict[str, ModelInfo] = {}
        self._headers: dict[str, GgufInfo] = {}
        self._extra: dict[str, None] = {}  # single files named through inspect()
        self._failed: set[_Stamp] = set()  # not hashable this session (unreadable)
        self._missing_dirs_logged: set[Path] = set()
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

    # --- state --------------------------------------------------------------------------

    @property
    def dirs(self) -> list[Path]:
        return list(self._dirs)

    def models(self) -> list[ModelInfo]:
        """A snapshot of every known model, in scan order."""
        with self._lock:
            return list(self._models.values())

    def get(self, path: Path | str) -> ModelInfo | None:
        with self._lock:
            return self._models.get(model_key(path))

    def header(self, path: Path | str) -> GgufInfo | None:
        """The parsed GGUF header of a known good model (chat template, metadata, tensors)."""
        with self._lock:
            return self._headers.get(model_key(path))

    @property
    def hashing(self) -> bool:
        with self._lock:
            return self._thread is not None

    # --- scanning -----------------------------------------------------------------------

    def scan(self) -> list[ModelInfo]:
        """Re-read the folders; unchanged files are not parsed again. Never raises per file."""
        paths = self._discover()
        with self._lock:
            previous = dict(self._models)
            prev_headers = dict(self._headers)
            paths.update(self._extra)
        fresh: dict[str, ModelInfo] = {}
        headers: dict[str, GgufInfo] = {}
        for key in paths:
            info, header = self._examine(key, previous.get(key), prev_headers.get(key))
            fresh[key] = info
            if header is not None:
                headers[key] = header
        with self._lock:
            for key, info in fresh.items():
                # The hasher may have finished one while we were reading headers.
                current = self._models.get(key)
                if (
                    info.sha256 is None
                    and current is not None
                    and current.sha256
                    and _stamp(current) == _stamp(info)
                ):
                    fresh[key] = dataclasses.replace(info, sha256=current.sha256)
            self._models = fresh
            self._headers = headers
            snapshot = tuple(fresh.values())
        self._publish(ModelsScanned(models=snapshot))
        return list(snapshot)

    def inspect(self, path: Path | str) -> ModelInfo:
        """Examine one file outside the folders and keep it in the registry from now on."""
        key = model_key(path)
        with self._lock:
            prev, prev_header = self._models.get(key), self._headers.get(key)
        info, header = self._examine(key, prev, prev_header)
        with self._lock:
            if os.path.isfile(key):
                self._extra[key] = None
                self._models[key] = info
                if header is not None:
                    self._headers[key] = header
                else:
                    self._headers.pop(key, None)
            snapshot = tuple(self._models.values())
        self._publish(ModelsScanned(models=snapshot))
        return info

    def _discover(self) -> dict[str, None]:
        found: dict[str, None] = {}
        for folder in self._dirs:
            folder = folder.expanduser()
            if folder.is_file():
                found[model_key(folder)] = None
                continue
            if not folder.is_dir():
                if folder not in self._missing_dirs_logged:
                    self._missing_dirs_logged.add(folder)
                    self._log("warning", f"model folder {folder} does not exist")
                continue
            for root, dirnames, filenames in os.walk(folder):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.lower().endswith(".gguf"):
                        found[model_key(os.path.join(root, name))] = None
        return found

    def _examine(
        self, key: str, prev: ModelInfo | None, prev_header: GgufInfo | None
    ) -> tuple[ModelInfo, GgufInfo | None]:
        """Header facts for one path, reusing the last result while size and mtime hold."""
        name = Path(key).stem
        try:
            st = check_regular_file(key)
        except GgufError as exc:
            return ModelInfo(path=key, name=name, size_bytes=0, mtime_ns=0, error=str(exc)), None
        header: GgufInfo | None
        if prev is not None and (prev.size_bytes, prev.mtime_ns) == (st.st_size, st.st_mtime_ns):
            info, header = prev, prev_header
        else:
            try:
                header = read_gguf(key)
                info = _info_from_header(key, st, header)
            except GgufError as exc:
                header = None
                info = ModelInfo(key, name, st.st_size, st.st_mtime_ns, error=str(exc))
                self._log("warning", str(exc))
        if info.error is None and info.sha256 is None:
            cached = self._cached(key, st.st_size, st.st_mtime_ns)
            if cached is not None:
                info = dataclasses.replace(info, sha256=cached)
        return info, header

    def _cached(self, key: str, size: int, mtime_ns: int) -> str | None:
        if self._store is None:
            return None
        try:
            return self._store.cached_model_hash(key, size, mtime_ns)
        except sqlite3.Error as exc:
            self._log("error", f"cannot read the model hash cache: {exc}")
            return None

    # --- hashing ------------------------------------------------------------------------

    def start_hashing(self) -> None:
        """Hash every good model that has no id yet; returns at once, idempotent."""
        with self._lock:
            if self._thread is not None:
                return
            self._cancel = threading.Event()
            self._thread = threading.Thread(
                target=self._hash_loop, args=(self._cancel,), name="model-hasher", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Cancel hashing (within one chunk) and wait for the thread to end."""
        with self._lock:
            thread = self._thread
            self._cancel.set()
        if thread is not None:
            thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the hasher runs out of work (no cancel); True when it has."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _hash_loop(self, cancel: threading.Event) -> None:
        me = threading.current_thread()
        try:
            while not cancel.is_set():
                with self._lock:
                    target = self._next_unhashed()
                    if target is None:
                        # Cleared under the same lock as the check, so a start_hashing()
                        # racing with this exit always starts a new thread.
                        self._thread = None
                        return
                self._hash_one(target, cancel)
        except Exception as exc:  # a bug must not kill the node silently
            self._log("error", f"model hashing stopped: {exc!r}")
        finally:
            with self._lock:
                if self._thread is me:
                    self._thread = None

    def _next_unhashed(self) -> ModelInfo | None:
        """Call with the lock held."""
        for m in self._models.values():
            if m.sha256 is None and m.error is None and _stamp(m) not in self._failed:
                return m
        return None

    def _hash_one(self, target: ModelInfo, cancel: threading.Event) -> None:
        key = target.path
        try:
            digest = self._hash_file(key, (target.size_bytes, target.mtime_ns), cancel)
        except HashCancelled:
            return
        except _Changed:
            self._refresh(key)
            return
        except GgufFileError as exc:
            with self._lock:
                self._failed.add(_stamp(target))
            self._log("warning", f"cannot hash the model: {exc}")
            return
        self._bus.publish_threadsafe(ModelHashed(path=key, sha256=digest))

    def _hash_file(self, key: str, expect: tuple[int, int] | None, cancel: threading.Event) -> str:
        """Cache, else hash; the result is stored only if the file held still meanwhile."""
        st = self._stat(key)
        stamp = (st.st_size, st.st_mtime_ns)
        if expect is not None and stamp != expect:
            raise _Changed(key)
        digest = self._cached(key, *stamp)
        if digest is None:

            def progress(done: int, total: int) -> None:
                event = ModelHashProgress(path=key, done_bytes=done, total_bytes=total)
                self._bus.publish_threadsafe(event)

            try:
                digest = sha256_file(key, progress=progress, cancel=cancel)
            except OSError as exc:
                raise gguf_file_error(key, exc) from exc
            after = self._stat(key)
            if (after.st_size, after.st_mtime_ns) != stamp:
                raise _Changed(key)
            if self._store is not None:
                self._store.save_model_hash(key, st.st_size, st.st_mtime_ns, digest)
        with self._lock:
            current = self._models.get(key)
            if current is not None and (current.size_bytes, current.mtime_ns) == stamp:
                self._models[key] = dataclasses.replace(current, sha256=digest)
        return digest

    @staticmethod
    def _stat(key: str) -> os.stat_result:
        return check_regular_file(key)

    def _refresh(self, key: str) -> None:
        """A file changed under the hasher: read its header again before hashing it."""
        with self._lock:
            prev = self._models.get(key)
        if prev is None:
            return
        info, header = self._examine(key, None, None)
        with self._lock:
            if key in self._models:
                self._models[key] = info
                if header is not None:
                    self._headers[key] = header
                else:
                    self._headers.pop(key, None)
            snapshot = tuple(self._models.values())
        self._bus.publish_threadsafe(ModelsScanned(models=snapshot))

    async def hash_now(self, path: Path | str) -> str:
        """The file's SHA-256 right away (cached by path, size, mtime), for the CLI and loads.

        Raises GgufFileError when the file is missing, unreadable, or changes while hashed.
        """
        key = model_key(path)
        cancel = threading.Event()
        try:
            digest = await asyncio.to_thread(self._hash_file_now, key, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise
        self._publish(ModelHashed(path=key, sha256=digest))
        return digest

    def _hash_file_now(self, key: str, cancel: threading.Event) -> str:
        try:
            return self._hash_file(key, None, cancel)
        except _Changed as exc:
            raise GgufFileError(
                key, f"{key} changed while it was being hashed; try again once it is complete"
            ) from exc

    # --- events -------------------------------------------------------------------------

    def _publish(self, event: Event) -> None:
        """Publish directly on the loop thread, through the loop from any other thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._bus.publish_threadsafe(event)
        else:
            self._bus.publish(event)

    def _log(self, level: LogLevel, message: str) -> None:
        self._publish(LogRecorded(level=level, source=LOG_SOURCE, message=message))


class _Changed(Exception):
    """The file's size or mtime moved between two looks: it is still being written."""
