"""`/fabstir/job/1.0.0` end to end: a real Node on 127.0.0.1 with the tiny GGUF loaded, real
libp2p clients, real llama.cpp, real SQLite nonces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gguf_factory import write_tiny_llama

from fabstir_tui.client.p2p import P2PRefused
from fabstir_tui.client.p2p_job import JobEvent, P2PClient, peer_id_for, run_job
from fabstir_tui.config import (
    ChainSection,
    Config,
    InferenceSection,
    P2pSection,
    PathsSection,
    TelemetrySection,
)
from fabstir_tui.engine.events import GenerationFinished
from fabstir_tui.engine.inference.stream import GenerationRequest
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.messages import EndFrame, ErrorCode, JobRequest, TokenFrame
from fabstir_tui.engine.p2p.request_auth import AuthDomain, SignedJobRequest, sign_request

LOCAL = "/ip4/127.0.0.1/tcp/0"
MARKET = "0x" + "4d" * 20
PROMPT = "Once upon a time"
CTX = 4096


@dataclass
class Rig:
    """A running node, the client identity it allowlists, its key and its models."""

    node: Node
    addr: str
    client_key: Any
    host_key: Any
    client_eth: Any
    served: str
    idle: str
    path: str

    def domain(self) -> AuthDomain:
        return AuthDomain.from_config(self.node.config)


@pytest.fixture(scope="module")
def long_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama with a 4096-token context: long enough to span several batches."""
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", context_length=CTX)


@pytest.fixture
async def rig(tmp_path: Path, long_gguf: Path) -> AsyncIterator[Rig]:
    from eth_account import Account
    from libp2p.crypto.ed25519 import create_new_key_pair

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(long_gguf, models / "tiny.gguf")
    write_tiny_llama(models / "other.gguf", seed=7, name="other")  # on disk, never loaded
    client_key = create_new_key_pair()
    host_key = Account.create()
    data = tmp_path / "data"
    data.mkdir()
    (data / "keystore.json").write_text(json.dumps(Account.encrypt(host_key.key, "pw")))
    config = Config(
        paths=PathsSection(data_dir=data, cache_dir=tmp_path / "cache", models_dirs=[models]),
        inference=InferenceSection(threads=1, context_length=CTX),
        telemetry=TelemetrySection(gpu_backend="none"),
        chain=ChainSection(job_marketplace=MARKET),
        p2p=P2pSection(enabled=True, listen_addrs=[LOCAL], job_allowlist=[peer_id_for(client_key)]),
    )
    node = Node(config)
    await node.start()
    try:
        async with asyncio.timeout(60):
            while any(m.sha256 is None for m in node.list_models()):
                await asyncio.sleep(0.05)
        by_name = {Path(m.path).name: m for m in node.list_models()}
        tiny = by_name["tiny.gguf"]
        await node.load_model(tiny.path)
        status = node.p2p_status()
        assert status is not None
        [addr] = [a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/")]
        assert tiny.sha256 is not None and by_name["other.gguf"].sha256 is not None
        yield Rig(
            node,
            addr,
            client_key,
            host_key,
            Account.create(),
            tiny.sha256,
            by_name["other.gguf"].sha256,
            tiny.path,
        )
    finally:
        await node.stop()


def _request(rig: Rig, **changes: Any) -> JobRequest:
    fields: dict[str, Any] = {
        "model_id": rig.served,
        "prompt": PROMPT,
        "max_tokens": 8,
        "job_id": "7",
        "temperature": 0.0,
    }
    fields.update(changes)
    return JobRequest(**fields)


def _signed(rig: Rig, **changes: Any) -> SignedJobRequest:
    fields: dict[str, Any] = {
        "host": rig.host_key.address,
        "prompt": PROMPT,
        "nonce": time.time_ns(),
        "expiry": int(time.time()) + 120,
        "job_id": 7,
    }
    fields.update(changes)
    return sign_request(rig.client_eth.key, rig.domain(), **fields)


async def _collect(client: P2PClient, addr: str, request: JobRequest) -> list[JobEvent]:
    stream = client.job(addr, request)
    async with contextlib.aclosing(stream):
        return [event async for event in stream]


async def _refused(client: P2PClient, rig: Rig, request: JobRequest) -> P2PRefused:
    with pytest.raises(P2PRefused) as caught:
        await _collect(client, rig.addr, request)
    info = await client.info(rig.addr)  # the node keeps serving
    assert rig.served in [m.id for m in info.models]
    return caught.value


@pytest.mark.slow
async def test_job_streams_the_engines_own_greedy_text_in_batches(rig: Rig) -> None:
    request = _request(rig, max_tokens=1000)
    own = rig.node.generate(
        rig.path, GenerationRequest(prompt=PROMPT, max_tokens=1000, temperature=0.0)
    )
    expected = await own.text()
    events = [event async for event in run_job(rig.addr, request, key_pair=rig.client_key)]
    *tokens, end = events
    assert isinstance(end, EndFrame)
    assert all(isinstance(t, TokenFrame) for t in tokens)
    text = "".join(t.text for t in tokens if isinstance(t, TokenFrame))
    assert text == expected and text
    assert len(tokens) >= 2, "a long generation arrives in several batches"
    assert sum(t.tokens for t in tokens if isinstance(t, TokenFrame)) == end.completion_tokens
    assert end.completion_tokens == own.stats.completion_tokens
    assert end.prompt_tokens == own.stats.prompt_tokens > 0
    assert end.finish_reason == own.stats.finish_reason
    assert end.receipt is None  # receipts come with the job pipeline


async def test_each_refusal_is_a_clear_error_frame_and_the_node_keeps_serving(rig: Rig) -> None:
    async with P2PClient() as stranger:
        err = await _refused(stranger, rig, _request(rig))
        assert err.code == ErrorCode.UNAUTHORIZED and "job_allowlist" in err.reason
    async with P2PClient(key_pair=rig.client_key) as client:
        err = await _refused(client, rig, _request(rig, model_id="ab" * 32))
        assert err.code == ErrorCode.MODEL_NOT_SERVED and "does not serve" in err.reason
        err = await _refused(client, rig, _request(rig, model_id=rig.idle))
        assert err.code == ErrorCode.MODEL_NOT_SERVED and "not loaded" in err.reason
        good = _signed(rig)
        forged = {**good.to_wire(), "signer": rig.host_key.address}  # not who signed it
        cases: list[tuple[dict[str, Any], str]] = [
            (forged, "bad_signature"),
            (_signed(rig, expiry=int(time.time()) - 5).to_wire(), "expired"),
            (_signed(rig, prompt="another prompt").to_wire(), "prompt_mismatch"),
            (_signed(rig, host="0x" + "99" * 20).to_wire(), "wrong_host"),
            (_signed(rig, expiry=int(time.time()) + 3600).to_wire(), "expiry_too_far"),
        ]
        for auth, reason in cases:
            err = await _refused(client, rig, _request(rig, auth=auth))
            assert err.code == ErrorCode.UNAUTHORIZED and f"({reason})" in err.reason, err

        once = _signed(rig).to_wire()
        events = await _collect(client, rig.addr, _request(rig, auth=once))
        assert isinstance(events[-1], EndFrame) and events[-1].completion_tokens >= 1
        err = await _refused(client, rig, _request(rig, auth=once))
        assert err.code == ErrorCode.UNAUTHORIZED and "(nonce_reused)" in err.reason


async def test_a_malformed_request_gets_a_malformed_error_frame(rig: Rig) -> None:
    frame = _request(rig).to_frame()
    del frame["prompt"]
    async with P2PClient(key_pair=rig.client_key) as client:
        raw = _RawRequest(frame)
        with pytest.raises(P2PRefused) as caught:
            await _collect(client, rig.addr, raw)  # type: ignore[arg-type]
        assert caught.value.code == ErrorCode.MALFORMED and "'prompt'" in caught.value.reason
        info = await client.info(rig.addr)
        assert rig.served in [m.id for m in info.models]


class _RawRequest:
    """Sends a hand-made frame where a JobRequest would go (to test the host's parser)."""

    def __init__(self, frame: dict[str, Any]) -> None:
        self._frame = frame

    def to_frame(self) -> dict[str, Any]:
        return self._frame


@pytest.mark.slow
async def test_a_client_that_leaves_cancels_its_generation(rig: Rig) -> None:
    finished = rig.node.bus.subscribe(GenerationFinished)
    async with P2PClient(key_pair=rig.client_key) as client:
        stream = client.job(rig.addr, _request(rig, max_tokens=4000))
        async with contextlib.aclosing(stream):
            first = await anext(stream)
            assert isinstance(first, TokenFrame)
        async with asyncio.timeout(30):
            event = await finished.get()
        assert isinstance(event, GenerationFinished)
        assert event.finish_reason == "cancelled" and event.completion_tokens < 4000
        events = await _collect(client, rig.addr, _request(rig))  # the slot is free again
        assert isinstance(events[-1], EndFrame) and events[-1].finish_reason != "cancelled"


@pytest.mark.slow
async def test_a_worker_that_dies_mid_job_ends_it_with_an_internal_error(rig: Rig) -> None:
    [loaded] = rig.node.loaded_models()
    async with P2PClient(key_pair=rig.client_key) as client:
        stream = client.job(rig.addr, _request(rig, max_tokens=4000))
        async with contextlib.aclosing(stream):
            first = await anext(stream)
            assert isinstance(first, TokenFrame)
            os.kill(loaded.worker_pid, signal.SIGKILL)  # the worker this node started
            with pytest.raises(P2PRefused) as caught:
                async for _event in stream:
                    pass
        assert caught.value.code == ErrorCode.INTERNAL and caught.value.reason
        info = await client.info(rig.addr)  # the node runs on
        assert rig.served in [m.id for m in info.models]
    assert rig.node.state == "running"
