"""`/fabstir/info/1.0.0` end to end: a real Node serving it on 127.0.0.1, `query_info`, the
`p2p info` CLI, and hostile streams against the live handler."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from fabstir_tui.client.p2p import P2PAddressError, P2PClientError, query_info
from fabstir_tui.config import Config, InferenceSection, P2pSection, PathsSection, TelemetrySection
from fabstir_tui.engine.events import LogRecorded
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.bridge import TrioBridge
from fabstir_tui.engine.p2p.frames import FrameReader
from fabstir_tui.engine.p2p.host import HostConfig, running_host
from fabstir_tui.engine.p2p.messages import INFO_PROTOCOL, ErrorCode, parse_error
from fabstir_tui.engine.p2p.service import package_version
from fabstir_tui.engine.p2p.streams import close_quietly

EXE = Path(sys.executable).parent / "fabstir-tui"
LOCAL = "/ip4/127.0.0.1/tcp/0"


def _config(tmp_path: Path, models: Path, listen: str = LOCAL) -> Config:
    return Config(
        paths=PathsSection(
            data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", models_dirs=[models]
        ),
        inference=InferenceSection(threads=1, context_length=256),
        telemetry=TelemetrySection(gpu_backend="none"),
        p2p=P2pSection(enabled=True, listen_addrs=[listen], api_url="http://127.0.0.1:8080"),
    )


@pytest.fixture
async def node(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[Node]:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_gguf, models / "tiny.gguf")
    n = Node(_config(tmp_path, models))
    await n.start()
    try:
        async with asyncio.timeout(60):
            while n.list_models()[0].sha256 is None:
                await asyncio.sleep(0.05)
        yield n
    finally:
        await n.stop()


def _addr(node: Node) -> str:
    status = node.p2p_status()
    assert status is not None
    [addr] = [a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/")]
    assert addr.endswith(f"/p2p/{status.peer_id}")
    return addr


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int) -> bytes:
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk


async def _raw_exchange(addr: str, payload: bytes) -> bytes:
    """Trio side: open the info protocol, send raw bytes, read everything until the close."""
    import multiaddr
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    config = HostConfig(Path("/nonexistent/key"), (LOCAL,))
    async with running_host(config, create_new_key_pair()) as host:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        with trio.fail_after(30):
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, [TProtocol(INFO_PROTOCOL)])
            if payload:
                await stream.write(payload)
            got = b""
            while True:
                try:
                    chunk = await stream.read(65536)
                except Exception:
                    break
                if not chunk:
                    break
                got += chunk
            await close_quietly(stream)
            return got


async def _hostile(addr: str, payload: bytes) -> dict[str, Any] | None:
    """The handler's reply to `payload`: its one frame, or None after a clean close."""
    bridge = TrioBridge()
    await bridge.start()
    try:
        raw: bytes = await bridge.run(_raw_exchange, addr, payload)
    finally:
        await bridge.stop()
    reader = FrameReader(_Bytes(raw))
    frame = await reader.read_frame()
    assert await reader.read_frame() is None  # one frame at most, then the close
    return frame


async def test_query_info_cli_and_hostile_streams(node: Node) -> None:
    addr = _addr(node)
    [model] = node.list_models()
    sha = model.sha256
    info = await query_info(addr, timeout_s=30)
    assert [(m.id, m.name) for m in info.models] == [(sha, model.name)]
    assert info.version == package_version()
    assert info.api_url == "http://127.0.0.1:8080"
    assert info.capacity.active_jobs == 0

    proc = await asyncio.create_subprocess_exec(
        str(EXE), "p2p", "info", addr, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert doc["peer"] == addr and doc["version"] == info.version
    assert [m["id"] for m in doc["models"]] == [sha]

    service = node.p2p
    assert service is not None
    service.request_timeout_s = 0.5
    body = b"[1, 2, 3]"
    cases: list[tuple[bytes, set[str]]] = [
        (b"\x00\x00\x00\x08\xff\xfe garbage", {ErrorCode.MALFORMED}),
        (struct.pack(">I", 2**31), {ErrorCode.FRAME_TOO_LARGE}),
        (struct.pack(">I", len(body)) + body, {ErrorCode.MALFORMED}),
        (b"", {ErrorCode.TIMEOUT}),  # sends nothing
        (b"\x00\x00", {ErrorCode.TIMEOUT}),  # stalls inside the header
    ]
    for payload, codes in cases:
        reply = await _hostile(addr, payload)
        assert reply is not None, payload
        assert parse_error(reply).code in codes, (payload, reply)
        again = await query_info(addr, timeout_s=30)  # the node still answers
        assert [m.id for m in again.models] == [sha]
    assert node.state == "running"


async def test_p2p_start_failure_leaves_node_running(tmp_path: Path, tiny_gguf: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    n = Node(_config(tmp_path, models, listen="/ip4/127.0.0.1/udp/1/not-a-transport"))
    await n.start()
    try:
        assert n.state == "running"
        assert n.p2p_status() is None
        async with asyncio.timeout(10):  # the logbook fills from the bus, a moment later
            while not any(r.source == "p2p" and r.level == "error" for r in n.recent_logs()):
                await asyncio.sleep(0.02)
    finally:
        await n.stop()


async def test_query_info_errors_are_readable() -> None:
    with pytest.raises(P2PAddressError, match="multiaddr"):
        await query_info("127.0.0.1:4001")
    with pytest.raises(P2PAddressError):
        await query_info("/ip4/127.0.0.1/tcp/1")  # no /p2p/<peer id>
    dead = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    with pytest.raises(P2PClientError, match="unreachable"):
        await query_info(dead, timeout_s=20)


async def test_cli_exit_codes_for_bad_and_dead_addresses() -> None:
    dead = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    for addr, code, why in ((dead, 1, b"unreachable"), ("not-an-addr", 2, b"not a multiaddr")):
        proc = await asyncio.create_subprocess_exec(
            str(EXE), "p2p", "info", addr, "--timeout", "20",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == code, err.decode()
        assert out == b""
        assert b"error: " in err and why in err, err


def test_node_info_prices_from_chain_and_first_gpu() -> None:
    from fabstir_tui.engine.chain.events import ChainStatus
    from fabstir_tui.engine.events import GpuDevice, GpuSnapshot, ModelInfo
    from fabstir_tui.engine.node import NodeSnapshot
    from fabstir_tui.engine.p2p.messages import parse_info
    from fabstir_tui.engine.p2p.service import node_info

    sha_a, sha_b = "ab" * 32, "cd" * 32
    token, owner = "0x" + "11" * 20, "0x" + "22" * 20
    models = (
        ModelInfo(path="/m/a.gguf", name="a", size_bytes=1, mtime_ns=1, sha256=sha_a),
        ModelInfo(path="/m/b.gguf", name="b", size_bytes=1, mtime_ns=1, sha256=sha_b),
        ModelInfo(path="/m/c.gguf", name="c", size_bytes=1, mtime_ns=1),  # not hashed yet
        ModelInfo(path="/m/d.gguf", name="d", size_bytes=1, mtime_ns=1, error="truncated"),
    )
    gpu = GpuSnapshot(
        available=True,
        backend="replay",
        devices=(
            GpuDevice(index=0, name="NVIDIA H200", memory_total_bytes=141 * 1024**3),
            GpuDevice(index=1, name="NVIDIA H200", memory_total_bytes=141 * 1024**3),
        ),
    )
    snap = NodeSnapshot(
        name="n", state="running", loaded=(), models=models, gpu=gpu, host=None, read_only=False
    )
    chain = ChainStatus(
        enabled=True,
        chain_id=84532,
        address=owner,
        models=(("0x" + sha_a.upper(), 1500),),
        price_token=token,
    )
    info = node_info(snap, chain, "https://api.example", "9.9.9")
    assert [(m.id, m.price_per_million, m.price_token) for m in info.models] == [
        (sha_a, 1500, token),
        (sha_b, 0, token),
    ]
    assert info.gpu is not None and (info.gpu.name, info.gpu.count) == ("NVIDIA H200", 2)
    assert info.gpu.vram_mib == 141 * 1024
    assert (info.chain_address, info.chain_id, info.version) == (owner, 84532, "9.9.9")
    assert parse_info(info.to_frame()) == info  # what we send, a client reads back

    bare = node_info(snap, None, "", "1")
    assert bare.chain_address == "" and bare.chain_id is None
    assert {m.price_per_million for m in bare.models} == {0}


async def test_service_dials_bootstrap_peers(node: Node, tmp_path: Path) -> None:
    from fabstir_tui.engine.p2p.service import P2PService, node_info

    status = node.p2p_status()
    assert status is not None
    config = Config(
        paths=PathsSection(data_dir=tmp_path / "other", cache_dir=tmp_path / "cache2"),
        p2p=P2pSection(enabled=True, listen_addrs=[LOCAL], bootstrap=[_addr(node)]),
    )
    other = P2PService(config, lambda: node_info(node.snapshot(), None, "", "1"))
    await other.start()
    try:
        assert (tmp_path / "other" / "p2p-identity").exists()
        service = node.p2p
        assert service is not None
        async with asyncio.timeout(30):
            while other.peer_id not in service.connected_peers():
                await asyncio.sleep(0.05)
    finally:
        await other.stop()
        await other.stop()
    assert other.status() is None


async def test_library_warnings_go_to_the_node_log_not_stderr(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    # bench/p2p_burst.py (run in-process by test_p2p_admission) leaves it at CRITICAL.
    library = logging.getLogger("libp2p")
    level = library.level
    library.setLevel(logging.WARNING)
    try:
        logging.getLogger("libp2p.test_forwarding").warning("Failed to open stream\n  Error: na")
    finally:
        library.setLevel(level)

    def forwarded() -> list[LogRecorded]:
        return [
            r for r in node.recent_logs() if r.source == "libp2p" and "open stream" in r.message
        ]

    async with asyncio.timeout(10):
        while not forwarded():
            await asyncio.sleep(0.01)
    [record] = forwarded()
    assert record.level == "debug" and record.message == "Failed to open stream"
    assert "Failed to open stream" not in capsys.readouterr().err
