"""The trio bridge (guest and thread mode) and the libp2p host factory, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from fabstir_tui.engine.p2p.bridge import BridgeClosed, TrioBridge
from fabstir_tui.engine.p2p.host import HostConfig, HostHandle, load_or_create_identity

PING = "/fabstir-test/ping/1.0.0"
LOCAL = ("/ip4/127.0.0.1/tcp/0",)


@pytest.fixture(params=["guest", "thread"])
async def bridge(request: pytest.FixtureRequest) -> AsyncIterator[TrioBridge]:
    b = TrioBridge(mode=request.param)
    await b.start()
    assert b.mode == request.param
    yield b
    await b.stop()


async def _add(a: int, b: int) -> int:
    await trio.sleep(0.01)
    return a + b


async def _boom() -> None:
    await trio.sleep(0)
    raise KeyError("from trio")


async def test_run_returns_and_raises_as_itself(bridge: TrioBridge) -> None:
    assert await bridge.run(_add, 2, 3) == 5
    with pytest.raises(KeyError, match="from trio"):
        await bridge.run(_boom)
    assert await bridge.run(_add, 1, 1) == 2  # the trio run survived the failure


async def test_spawn_failure_is_logged_not_fatal(
    bridge: TrioBridge, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        bridge.spawn(_boom)
        for _ in range(200):
            if "failed" in caplog.text:
                break
            await asyncio.sleep(0.01)
    assert "_boom" in caplog.text
    assert await bridge.run(_add, 1, 2) == 3


async def test_loop_keeps_serving_while_trio_sleeps(bridge: TrioBridge) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await bridge.run(trio.sleep, 0.2)
    task.cancel()
    assert ticks > before + 1


async def test_cancelling_the_asyncio_caller_cancels_trio(bridge: TrioBridge) -> None:
    cancelled = trio.Event()

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bridge.run(forever), 0.1)
    await bridge.run(cancelled.wait)  # returns only if the trio task saw the cancellation


async def test_trio_calls_back_into_asyncio(bridge: TrioBridge) -> None:
    loop_thread_results: list[int] = []

    async def on_loop(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 2

    async def from_trio() -> int:
        bridge.to_asyncio(loop_thread_results.append, 7)
        return await bridge.call_asyncio(on_loop, 21)

    assert await bridge.run(from_trio) == 42
    await asyncio.sleep(0.01)
    assert loop_thread_results == [7]


async def test_a_late_asyncio_result_after_the_trio_caller_left_is_dropped(
    bridge: TrioBridge,
) -> None:
    finished = asyncio.Event()

    async def stubborn() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # finishes after its trio caller has closed its channel
        finished.set()
        return 1

    async def impatient() -> bool:
        with trio.move_on_after(0.05) as scope:
            await bridge.call_asyncio(stubborn)
        return scope.cancelled_caught

    assert await bridge.run(impatient)
    await finished.wait()
    await asyncio.sleep(0.05)  # let the late result cross into trio
    assert await bridge.run(_add, 2, 2) == 4  # the trio run survived it


async def test_service_failure_after_start_keeps_bridge(
    bridge: TrioBridge, caplog: pytest.LogCaptureFixture
) -> None:
    async def service(*, task_status: Any) -> None:
        task_status.started("up")
        await trio.sleep(0.01)
        raise RuntimeError("service died")

    with caplog.at_level(logging.ERROR):
        assert await bridge.start_service(service) == "up"
        await asyncio.sleep(0.2)
    assert "service died" in caplog.text
    assert await bridge.run(_add, 2, 2) == 4


async def test_stop_is_clean_and_idempotent() -> None:
    b = TrioBridge()
    await b.stop()  # before start: a no-op
    b = TrioBridge()
    await b.start()
    started = asyncio.Event()

    async def waiting() -> None:
        b.to_asyncio(started.set)
        await trio.sleep_forever()

    pending = asyncio.create_task(b.run(waiting))
    await started.wait()
    await b.stop()
    await b.stop()
    assert not b.running
    with pytest.raises(BridgeClosed):
        await pending
    with pytest.raises(BridgeClosed):
        await b.run(_add, 1, 1)


async def test_second_guest_run_falls_back_to_thread() -> None:
    first, second = TrioBridge(), TrioBridge()
    await first.start()
    await second.start()
    try:
        assert (first.mode, second.mode) == ("guest", "thread")
        assert await second.run(_add, 1, 2) == 3
    finally:
        await second.stop()
        await first.stop()


# --- libp2p host ------------------------------------------------------------------------


def test_identity_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    from libp2p.peer.id import ID

    path = tmp_path / "p2p" / "identity.key"
    first = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_identity(path)
    assert ID.from_pubkey(first.public_key) == ID.from_pubkey(again.public_key)
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]  # no temp file left


def test_built_host_applies_the_workarounds(tmp_path: Path) -> None:
    from fabstir_tui.engine.p2p.host import build_host

    config = HostConfig(tmp_path / "w.key", LOCAL)
    host = build_host(config, load_or_create_identity(config.identity_path))
    swarm: Any = host.get_network()
    assert swarm.connection_config.max_connections_per_peer == 1
    assert list(swarm.upgrader.security_multistream.transports) == ["/noise"]
    assert list(swarm.upgrader.muxer_multistream.transports) == ["/yamux/1.0.0"]


async def _ping_handler(stream: Any) -> None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.read(64)
        if not chunk:
            break
        data += chunk
    await stream.write(b"pong:" + data)
    await stream.close()


async def _ping(host: Any, peer_id: str, payload: bytes) -> bytes:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    with trio.fail_after(10):
        stream = await host.new_stream(ID.from_base58(peer_id), [TProtocol(PING)])
        await stream.write(payload + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = await stream.read(64)
            if not chunk:
                break
            reply += chunk
        await stream.close()
        return reply


async def test_two_hosts_connect_and_ping(bridge: TrioBridge, tmp_path: Path) -> None:
    from libp2p.custom_types import TProtocol

    a = await HostHandle.start(bridge, HostConfig(tmp_path / "a.key", LOCAL))
    b = await HostHandle.start(bridge, HostConfig(tmp_path / "b.key", LOCAL))
    try:
        b.host.set_stream_handler(TProtocol(PING), _ping_handler)
        assert await a.connect(b.addrs()[0]) == b.peer_id
        assert await bridge.run(_ping, a.host, b.peer_id, b"hello") == b"pong:hello\n"
        assert await bridge.run(_ping, a.host, b.peer_id, b"again") == b"pong:again\n"
    finally:
        await a.stop()
        await b.stop()
        await a.stop()  # idempotent


async def test_identity_survives_host_restart(tmp_path: Path) -> None:
    config = HostConfig(tmp_path / "node.key", LOCAL)
    bridge = TrioBridge()
    await bridge.start()
    try:
        first = await HostHandle.start(bridge, config)
        peer_id = first.peer_id
        await first.stop()
        second = await HostHandle.start(bridge, config)
        assert second.peer_id == peer_id
        assert stat.S_IMODE(config.identity_path.stat().st_mode) == 0o600
        await second.stop()
    finally:
        await bridge.stop()


async def _dial_with_plaintext_only(addr: str) -> str:
    """Trio side: a host offering only /plaintext/2.0.0 dials ours; returns how it failed."""
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    key_pair = create_new_key_pair()
    dialer = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)},
        listen_addrs=[multiaddr.Multiaddr(LOCAL[0])],
    )
    async with dialer.run([multiaddr.Multiaddr(LOCAL[0])]):
        try:
            with trio.fail_after(15):
                await dialer.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
        except Exception as exc:
            return type(exc).__name__
        finally:
            await dialer.close()
    return "connected"


async def _library_default_host_addr(*, task_status: Any) -> None:
    """Trio service: a host as `new_host()` builds it by default (it accepts plaintext)."""
    import multiaddr
    from libp2p import new_host

    default = new_host(listen_addrs=[multiaddr.Multiaddr(LOCAL[0])])
    async with default.run([multiaddr.Multiaddr(LOCAL[0])]):
        try:
            task_status.started(str(default.get_addrs()[0]))
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await default.close()


async def test_plaintext_only_dialer_is_refused(tmp_path: Path) -> None:
    bridge = TrioBridge()
    await bridge.start()
    try:
        # Control: the same dialer gets into a library-default host, so the refusal below is ours.
        default_addr = await bridge.start_service(_library_default_host_addr)
        assert await bridge.run(_dial_with_plaintext_only, default_addr) == "connected"
        node = await HostHandle.start(bridge, HostConfig(tmp_path / "n.key", LOCAL))
        outcome = await bridge.run(_dial_with_plaintext_only, node.addrs()[0])
        assert outcome == "SwarmDialAllFailedError"  # "failed to negotiate the secure protocol"
        assert node.host.get_connected_peers() == []
        await node.stop()
    finally:
        await bridge.stop()


async def _probe_after_disconnect(host: Any, peer: str) -> tuple[float, str, int]:
    from libp2p.peer.id import ID

    from fabstir_tui.engine.p2p.peer_probe import ProbeError, ping_peer, query_peer_info

    pid = ID.from_base58(peer)
    rtt = await ping_peer(host, pid, 5.0)
    await host.disconnect(pid)
    errors = []
    for probe in (
        ping_peer(host, pid, 5.0),
        query_peer_info(host, pid, 5.0, connected_only=True),
    ):
        with pytest.raises(ProbeError) as caught:
            await probe
        errors.append(str(caught.value))
    return rtt, " / ".join(errors), len(host.get_network().get_connections(pid))


async def test_probes_of_a_disconnected_peer_never_dial_it(tmp_path: Path) -> None:
    # The Peers screen pings every second: a ping racing the operator's `d` once dialled the
    # peer again (new_stream dials), and the row came back connected.
    bridge = TrioBridge()
    await bridge.start()
    a = await HostHandle.start(bridge, HostConfig(tmp_path / "a.key", LOCAL))
    b = await HostHandle.start(bridge, HostConfig(tmp_path / "b.key", LOCAL))
    try:
        await a.connect(b.addrs()[0])
        rtt, errors, left = await bridge.run(_probe_after_disconnect, a.host, b.peer_id)
        assert rtt > 0
        assert errors.count("not connected any more") == 2
        assert left == 0
    finally:
        await a.stop()
        await b.stop()
        await bridge.stop()
