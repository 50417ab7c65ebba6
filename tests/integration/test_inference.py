"""Inference workers on real llama.cpp: load, stream, cancel, unload, bad files, a killed worker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fabstir_tui.config import InferenceSection
from fabstir_tui.engine.events import (
    Event,
    EventBus,
    GenerationFailed,
    GenerationFinished,
    LogRecorded,
    ModelLoaded,
    ModelLoadFailed,
    ModelLoadProgress,
    ModelUnloaded,
    ModelWorkerDied,
    Subscription,
)
from fabstir_tui.engine.inference.manager import ModelManager
from fabstir_tui.engine.inference.stream import (
    GenerationRequest,
    InferenceError,
    WorkerDiedError,
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _collect(sub: Subscription, until: type[Event], limit_s: float = 30) -> list[Event]:
    """Events up to and including the first `until`, bounded so a bug fails instead of hanging."""
    seen: list[Event] = []

    async def run() -> None:
        async for ev in sub:
            seen.append(ev)
            if isinstance(ev, until):
                return

    await asyncio.wait_for(run(), limit_s)
    return seen


@pytest.fixture
async def manager() -> AsyncIterator[ModelManager]:
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    mgr = ModelManager(InferenceSection(threads=1, context_length=512), bus)
    yield mgr
    await mgr.stop()


PROMPT = GenerationRequest(prompt="hello world", max_tokens=12, temperature=0.0)


async def test_load_stream_unload_tiny(manager: ModelManager, tiny_gguf: Path) -> None:
    sub = manager.bus.subscribe()
    model = await manager.load(str(tiny_gguf))
    events = await _collect(sub, ModelLoaded)
    progress = [e for e in events if isinstance(e, ModelLoadProgress)]
    assert progress[0].stage == "checking the file" and progress[-1].stage == "ready"
    fractions = [e.fraction for e in progress]
    assert fractions == sorted(fractions), "progress never goes backwards"
    # llama.cpp's own per-tensor progress comes through, not only our stage markers.
    assert len([e for e in progress if e.stage == "loading weights"]) > 2
    assert any(isinstance(e, LogRecorded) and e.source == "llama.cpp" for e in events), (
        "llama.cpp's own log lines should be routed into our log"
    )
    assert model.worker_pid != os.getpid() and _pid_alive(model.worker_pid)
    assert model.n_threads == 1 and model.chat_format == "gguf"

    stream = manager.generate(model.path, PROMPT)
    pieces = [p async for p in stream]
    st = stream.stats
    assert st.finish_reason in ("length", "stop")
    assert 0 < st.completion_tokens <= PROMPT.max_tokens
    assert st.prompt_tokens > 0 and st.ttft_s is not None
    # Greedy decoding is deterministic: a second run gives the same text.
    again = await manager.generate(model.path, PROMPT).text()
    assert again == "".join(pieces)
    done = await _collect(sub, GenerationFinished)
    assert isinstance(done[-1], GenerationFinished)
    assert done[-1].completion_tokens == st.completion_tokens

    await manager.unload(model.path)
    assert not _pid_alive(model.worker_pid), "unload must end the worker and free its memory"
    assert manager.loaded() == []
    assert any(isinstance(e, ModelUnloaded) for e in await _collect(sub, ModelUnloaded))


async def test_chat_uses_gguf_template(manager: ModelManager, tiny_gguf: Path) -> None:
    model = await manager.load(str(tiny_gguf))
    chat = GenerationRequest(
        messages=({"role": "user", "content": "hi"},), max_tokens=4, temperature=0.0
    )
    plain = GenerationRequest(prompt="hi", max_tokens=4, temperature=0.0)
    s_chat = manager.generate(model.path, chat)
    await s_chat.text()
    s_plain = manager.generate(model.path, plain)
    await s_plain.text()
    # The ChatML template wraps the message in role markers: many more prompt tokens.
    assert s_chat.stats.prompt_tokens > s_plain.stats.prompt_tokens + 4


async def test_prompt_longer_than_context_is_a_clear_error(
    manager: ModelManager, tiny_gguf: Path
) -> None:
    model = await manager.load(str(tiny_gguf))
    stream = manager.generate(model.path, GenerationRequest(prompt="word " * 2000, max_tokens=4))
    with pytest.raises(InferenceError, match="context holds"):
        await stream.text()
    # The worker survives a refused request.
    assert await manager.generate(model.path, PROMPT).text()


@pytest.mark.parametrize("fixture", ["truncated_gguf", "not_gguf"])
async def test_bad_files_fail_with_one_sentence(
    manager: ModelManager, fixture: str, request: pytest.FixtureRequest, tiny_gguf: Path
) -> None:
    bad: Path = request.getfixturevalue(fixture)
    sub = manager.bus.subscribe(ModelLoadFailed)
    with pytest.raises(InferenceError) as info:
        await manager.load(str(bad))
    message = str(info.value)
    assert str(bad.name) in message and "\n" not in message
    assert ("truncated" in message) if fixture == "truncated_gguf" else ("not a GGUF" in message)
    failed = await _collect(sub, ModelLoadFailed)
    assert isinstance(failed[-1], ModelLoadFailed)
    # The engine keeps working.
    model = await manager.load(str(tiny_gguf))
    assert await manager.generate(model.path, PROMPT).text()


async def test_missing_file(manager: ModelManager, tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="does not exist|not found|No such file"):
        await manager.load(str(tmp_path / "nope.gguf"))


async def test_cancel_before_start_is_honoured(manager: ModelManager, tiny_gguf: Path) -> None:
    model = await manager.load(str(tiny_gguf))
    first = manager.generate(model.path, GenerationRequest(prompt="a", max_tokens=200))
    queued = manager.generate(model.path, GenerationRequest(prompt="b", max_tokens=200))
    await queued.cancel()
    await first.text()
    await queued.text()
    assert queued.stats.finish_reason == "cancelled"
    assert not queued.started and queued.stats.completion_tokens == 0
    assert first.stats.finish_reason == "length" and first.stats.completion_tokens == 200


STORY = GenerationRequest(
    messages=(
        {"role": "user", "content": "Write a long story about a dragon who learns to cook."},
    ),
    max_tokens=300,
    temperature=0.0,
)  # greedy, SmolLM2 runs all 300 tokens on this (measured): only we can end it sooner


@pytest.mark.slow
async def test_cancel_mid_stream_smollm(manager: ModelManager, smollm_gguf: Path) -> None:
    model = await manager.load(str(smollm_gguf))
    # Greedy, this prompt runs the full 300 tokens (measured); only a cancel ends it sooner.
    story = GenerationRequest(
        messages=(
            {"role": "user", "content": "Write a long story about a dragon who learns to cook."},
        ),
        max_tokens=300,
        temperature=0.0,
    )
    stream = manager.generate(model.path, story)
    async for _ in stream:
        await stream.cancel()
    assert stream.stats.finish_reason == "cancelled"
    assert stream.stats.completion_tokens < 300
    # The worker serves the next request after a cancel.
    again = manager.generate(model.path, GenerationRequest(prompt="Hi", max_tokens=4))
    assert await again.text()


@pytest.mark.slow
async def test_sigkill_mid_stream_then_reload(manager: ModelManager, smollm_gguf: Path) -> None:
    sub = manager.bus.subscribe(ModelWorkerDied, GenerationFailed)
    model = await manager.load(str(smollm_gguf))
    stream = manager.generate(model.path, STORY)
    killed = False
    with pytest.raises(WorkerDiedError, match="SIGKILL"):
        async for _ in stream:
            if not killed:
                os.kill(model.worker_pid, signal.SIGKILL)
                killed = True
    events = await _collect(sub, ModelWorkerDied)
    died = [e for e in events if isinstance(e, ModelWorkerDied)]
    assert died and "SIGKILL" in died[0].reason and died[0].exit_code == -signal.SIGKILL
    assert manager.loaded() == []
    with pytest.raises(InferenceError, match="not loaded"):
        manager.generate(model.path, PROMPT)
    # Restart on demand: the same model loads again and serves.
    again = await manager.load(str(smollm_gguf))
    assert again.worker_pid != model.worker_pid
    text = await manager.generate(again.path, GenerationRequest(prompt="Hi", max_tokens=8)).text()
    assert text


@pytest.mark.slow
async def test_unload_mid_stream_says_so(manager: ModelManager, smollm_gguf: Path) -> None:
    model = await manager.load(str(smollm_gguf))
    stream = manager.generate(model.path, STORY)
    with pytest.raises(WorkerDiedError, match="was unloaded while this request was running"):
        async for _ in stream:
            if manager.loaded():
                await manager.unload(model.path)
    assert not _pid_alive(model.worker_pid)


async def test_seed_does_not_leak_into_unseeded_requests(
    manager: ModelManager, tiny_gguf: Path
) -> None:
    model = await manager.load(str(tiny_gguf))

    def req(seed: int) -> GenerationRequest:
        return GenerationRequest(prompt="the", max_tokens=24, temperature=1.5, seed=seed)

    seeded = [await manager.generate(model.path, req(42)).text() for _ in range(2)]
    assert seeded[0] == seeded[1], "the same seed gives the same text"
    unseeded = {await manager.generate(model.path, req(-1)).text() for _ in range(3)}
    assert len(unseeded) > 1, "after a seeded request, unseeded ones must not repeat its seed"


def _write_oversized_gguf(path: Path, total_bytes: int) -> Path:
    """A GGUF whose header declares more weights than this machine has RAM: a sparse file, so
    it costs no disk, but real to every reader that checks sizes."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(4096)
    writer.add_head_count(32)
    writer.add_context_length(4096)
    rows = total_bytes // (4096 * 4)
    writer.add_tensor_info("token_embd.weight", (rows, 4096), np.dtype(np.float32), rows * 4096 * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.truncate(size + (-size % 32) + rows * 4096 * 4)
    return path


async def test_model_bigger_than_memory_is_refused_before_spawning(
    manager: ModelManager, tmp_path: Path
) -> None:
    import psutil

    huge = _write_oversized_gguf(tmp_path / "huge.gguf", 2 * psutil.virtual_memory().total)
    with pytest.raises(InferenceError, match="not enough memory to load huge.gguf"):
        await manager.load(str(huge))
    assert manager.loaded() == []
