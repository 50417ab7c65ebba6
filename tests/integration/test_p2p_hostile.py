"""Hostile bytes against both live handlers (`/fabstir/info`, `/fabstir/job`) of one running
Node, over real libp2p streams: every answer is one error frame (or, for a valid info request,
the info) or a clean close, never a crash; afterwards a valid info query still answers."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fabstir_tui.client.p2p import parse_peer_addr
from fabstir_tui.client.p2p_job import P2PClient, peer_id_for
from fabstir_tui.config import Config, InferenceSection, P2pSection, PathsSection, TelemetrySection
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.frames import MAX_FRAME_BYTES, FrameReader
from fabstir_tui.engine.p2p.job_protocol import JobProtocol
from fabstir_tui.engine.p2p.messages import (
    INFO_PROTOCOL,
    JOB_PROTOCOL,
    parse_error,
    parse_info,
)
from fabstir_tui.engine.p2p.streams import close_quietly

LOCAL = "/ip4/127.0.0.1/tcp/0"
HOSTILE = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass
class Live:
    """One running node and one kept client host, driven from a private event loop."""

    loop: asyncio.AbstractEventLoop
    node: Node
    client: P2PClient
    addr: str
    model_id: str

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Live]:
    """Module-wide: hypothesis calls the test many times on one node (sync, own loop)."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    root = tmp_path_factory.mktemp("hostile")
    models = root / "models"
    models.mkdir()
    shutil.copy(tiny_gguf, models / "tiny.gguf")
    key = create_new_key_pair()
    config = Config(
        paths=PathsSection(data_dir=root / "data", cache_dir=root / "cache", models_dirs=[models]),
        inference=InferenceSection(threads=1, context_length=256),
        telemetry=TelemetrySection(gpu_backend="none"),
        p2p=P2pSection(enabled=True, listen_addrs=[LOCAL], job_allowlist=[peer_id_for(key)]),
    )
    loop = asyncio.new_event_loop()
    node = Node(config)
    client = P2PClient(key_pair=key, timeout_s=20)
    try:
        loop.run_until_complete(node.start())
        service = node.p2p
        assert service is not None
        service.request_timeout_s = 1.0
        for component in service.components:
            if isinstance(component, JobProtocol):
                component.request_timeout_s = 1.0
        loop.run_until_complete(_wait_hashed(node))
        loop.run_until_complete(client.__aenter__())
        status = node.p2p_status()
        assert status is not None
        [addr] = [a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/")]
        sha = node.list_models()[0].sha256
        assert sha is not None
        yield Live(loop, node, client, addr, sha)
    finally:
        loop.run_until_complete(client.__aexit__(None, None, None))
        loop.run_until_complete(node.stop())
        loop.close()


async def _wait_hashed(node: Node) -> None:
    async with asyncio.timeout(60):
        while node.list_models()[0].sha256 is None:
            await asyncio.sleep(0.05)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _json_frame(obj: Any) -> bytes:
    return _frame(json.dumps(obj).encode())


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_tags = st.sampled_from(["info_request", "job_request", "tokens", "end", "error", "info", "x"])
_wrong_frames = st.builds(
    lambda t, v, extra: {**extra, "t": t, "v": v},
    _tags,
    st.sampled_from([1, 1, 2, "1", True, None]),
    st.dictionaries(
        st.sampled_from(
            ["job_id", "session_id", "model_id", "prompt", "max_tokens", "temperature", "auth"]
        ),
        _json,
        max_size=6,
    ),
)
_valid_shape = st.builds(
    lambda mid, n, auth: {
        "v": 1,
        "t": "job_request",
        "job_id": "1",
        "model_id": mid,
        "prompt": "hi",
        "max_tokens": n,
        "auth": auth,
    },
    st.text(min_size=1, max_size=70),
    st.integers(1, 8),
    st.none() | st.dictionaries(st.sampled_from(["jobId", "signer", "signature"]), _json),
)
payloads = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(_frame),  # a valid length header, junk inside
    st.tuples(st.integers(MAX_FRAME_BYTES + 1, 2**32 - 1), st.binary(max_size=16)).map(
        lambda p: struct.pack(">I", p[0]) + p[1]
    ),
    st.tuples(_wrong_frames.map(_json_frame), st.integers(1, 40)).map(
        lambda p: p[0][: max(1, len(p[0]) - p[1])]  # truncated mid-frame
    ),
    _wrong_frames.map(_json_frame),
    _valid_shape.map(_json_frame),
    st.integers(50, 3000).map(lambda n: _frame(b"[" * n + b"]" * n)),  # deep nesting
    st.just(_json_frame({"v": 1, "t": "info_request"}) * 2),
)


async def _raw(host: Any, addr: str, protocol: str, payload: bytes) -> bytes:
    """Trio side: open `protocol`, send `payload`, half-close, read until the host closes."""
    from libp2p.custom_types import TProtocol

    info, _peer = parse_peer_addr(addr)
    with trio.fail_after(30):
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [TProtocol(protocol)])
        try:
            try:
                if payload:
                    await stream.write(payload)
                await stream.close_write()
            except Exception:
                pass  # the host may already have answered and closed: read what it said
            got = b""
            while True:
                try:
                    chunk = await stream.read(65536)
                except Exception:
                    break
                if not chunk:
                    break
                got += chunk
            return got
        finally:
            await close_quietly(stream)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int) -> bytes:
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk


async def _frames(raw: bytes) -> list[dict[str, Any]]:
    reader = FrameReader(_Bytes(raw))
    return [frame async for frame in reader]


@HOSTILE
@given(protocol=st.sampled_from([INFO_PROTOCOL, JOB_PROTOCOL]), payload=payloads)
def test_hostile_bytes_get_an_error_frame_or_a_clean_close(
    live: Live, protocol: str, payload: bytes
) -> None:
    client = live.client
    raw = live.run(client.bridge.run(_raw, client.host, live.addr, protocol, payload))
    frames = live.run(_frames(raw))
    assert len(frames) <= 1, frames  # one answer at most, then the close
    event(f"{protocol.split('/')[2]}: {frames[0].get('code', 'info') if frames else 'closed'}")
    for frame in frames:
        if frame.get("t") == "info":
            assert protocol == INFO_PROTOCOL
            assert live.model_id in [m.id for m in parse_info(frame).models]
        else:
            assert parse_error(frame).code  # an error frame that parses
    assert live.node.state == "running"


def test_after_the_storm_info_still_answers(live: Live) -> None:
    info = live.run(live.client.info(live.addr))
    assert [m.id for m in info.models] == [live.model_id]
    assert live.node.state == "running"
