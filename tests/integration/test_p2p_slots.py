"""Slots over the real job protocol: with one inference slot a second and third request wait,
are told their place in `queued` frames, a waiter that leaves lets the others up, and the
next request runs as soon as the slot frees. Real node, real libp2p, real llama.cpp."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from gguf_factory import write_tiny_llama

from fabstir_tui.client.p2p import query_info
from fabstir_tui.client.p2p_job import JobEvent, P2PClient, peer_id_for
from fabstir_tui.config import Config, InferenceSection, P2pSection, PathsSection, TelemetrySection
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest, QueuedFrame, TokenFrame

CTX = 4096


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Node, str, str, object]]:
    from libp2p.crypto.ed25519 import create_new_key_pair

    models = tmp_path / "models"
    models.mkdir()
    write_tiny_llama(tmp_path / "tiny.gguf", context_length=CTX)
    shutil.copy(tmp_path / "tiny.gguf", models / "tiny.gguf")
    key = create_new_key_pair()
    config = Config(
        paths=PathsSection(
            data_dir=tmp_path / "data", cache_dir=tmp_path / "c", models_dirs=[models]
        ),
        inference=InferenceSection(threads=1, context_length=CTX, slots=1),
        telemetry=TelemetrySection(gpu_backend="none"),
        p2p=P2pSection(
            enabled=True, listen_addrs=["/ip4/127.0.0.1/tcp/0"], job_allowlist=[peer_id_for(key)]
        ),
    )
    node = Node(config)
    await node.start()
    try:
        async with asyncio.timeout(60):
            while any(m.sha256 is None for m in node.list_models()):
                await asyncio.sleep(0.05)
        [model] = node.list_models()
        await node.load_model(model.path)
        status = node.p2p_status()
        assert status is not None and model.sha256 is not None
        addr = next(a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/"))
        yield node, addr, model.sha256, key
    finally:
        await node.stop()


@pytest.mark.slow
async def test_requests_beyond_the_slot_wait_with_their_position(
    served: tuple[Node, str, str, object],
) -> None:
    node, addr, sha, key = served

    def request(max_tokens: int, job_id: str) -> JobRequest:
        return JobRequest(
            model_id=sha, prompt="Once upon a time", max_tokens=max_tokens, job_id=job_id
        )

    async with P2PClient(key_pair=key, timeout_s=60) as client:
        seen: dict[str, list[JobEvent]] = {"long": [], "second": [], "third": []}
        changed = asyncio.Event()

        async def run(name: str, req: JobRequest) -> None:
            async for event in client.job(addr, req):
                seen[name].append(event)
                changed.set()

        async def until(check: Callable[[], object]) -> None:
            async with asyncio.timeout(60):
                while not check():
                    changed.clear()
                    await changed.wait()

        long = asyncio.create_task(run("long", request(3500, "1")))
        await until(lambda: any(isinstance(e, TokenFrame) for e in seen["long"]))
        second = asyncio.create_task(run("second", request(4, "2")))
        await until(lambda: seen["second"])
        third = asyncio.create_task(run("third", request(4, "3")))
        await until(lambda: seen["third"])
        assert seen["second"][0] == QueuedFrame(position=1)
        assert seen["third"][0] == QueuedFrame(position=2)
        # what the node tells others of its capacity: one slot, busy, two waiting
        busy = (await query_info(addr, timeout_s=30)).capacity
        assert (busy.max_jobs, busy.active_jobs, busy.queued_jobs) == (1, 1, 2)

        third.cancel()  # the third client gives up while waiting
        await asyncio.gather(third, return_exceptions=True)
        long.cancel()  # the long stream's client leaves: its slot goes to the second
        await asyncio.gather(long, return_exceptions=True)
        async with asyncio.timeout(60):
            await second
        assert isinstance(seen["second"][-1], EndFrame)
        assert not any(isinstance(e, TokenFrame) for e in seen["third"])
        slots = node.models.slot_queue(node.list_models()[0].path)
        async with asyncio.timeout(30):  # the slot is handed back just after the end frame
            while slots.busy or slots.waiting:
                await asyncio.sleep(0.02)

        # The queue is empty again: a new request runs at once, with no queued frame.
        fresh: list[JobEvent] = [e async for e in client.job(addr, request(4, "4"))]
        assert not any(isinstance(e, QueuedFrame) for e in fresh)
        assert isinstance(fresh[-1], EndFrame)
        idle = (await query_info(addr, timeout_s=30)).capacity
        assert (idle.max_jobs, idle.active_jobs, idle.queued_jobs) == (1, 0, 0)
