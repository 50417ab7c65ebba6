"""The peer book between real nodes on 127.0.0.1: directions, info, ping, disconnect, a peer
that does not speak the info protocol, and the operator's connect/disconnect commands."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from fabstir_tui.config import Config, InferenceSection, P2pSection, PathsSection, TelemetrySection
from fabstir_tui.engine.events import PeerModel, PeersChanged, PeerView
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.node_peers import PeerCommandError
from fabstir_tui.engine.p2p.bridge import TrioBridge
from fabstir_tui.engine.p2p.host import HostConfig, HostHandle
from fabstir_tui.engine.p2p.peer_book import PeerAnnouncement

LOCAL = "/ip4/127.0.0.1/tcp/0"
BOUND_S = 60.0  # a safety net against a hung test, not a timing claim

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, name: str, models: Path, *, p2p: bool = True) -> Config:
    return Config(
        paths=PathsSection(
            data_dir=tmp_path / name / "data",
            cache_dir=tmp_path / name / "cache",
            models_dirs=[models],
        ),
        inference=InferenceSection(threads=1, context_length=256),
        telemetry=TelemetrySection(gpu_backend="none"),
        p2p=P2pSection(
            enabled=p2p, listen_addrs=[LOCAL], ping_interval_s=1, peer_info_interval_s=1
        ),
    )


@pytest.fixture
def models(tmp_path: Path, tiny_gguf: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_gguf, folder / "tiny.gguf")
    return folder


@pytest.fixture
async def nodes(tmp_path: Path, models: Path) -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node(_config(tmp_path, "a", models)), Node(_config(tmp_path, "b", models))
    try:
        await a.start()
        await b.start()
        async with asyncio.timeout(BOUND_S):
            while any(m.sha256 is None for n in (a, b) for m in n.list_models()):
                await asyncio.sleep(0.05)
        yield a, b
    finally:
        await b.stop()
        await a.stop()


@pytest.fixture
async def bare_host(tmp_path: Path) -> AsyncIterator[HostHandle]:
    """A plain libp2p host: identify and ping only, no fabstir protocols."""
    bridge = TrioBridge()
    await bridge.start()
    try:
        handle = await HostHandle.start(bridge, HostConfig(tmp_path / "bare-key", (LOCAL,)))
        try:
            yield handle
        finally:
            await handle.stop()
    finally:
        await bridge.stop()


def _addr(node: Node) -> str:
    status = node.p2p_status()
    assert status is not None
    return next(a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/"))


def _peer(node: Node, peer_id: str) -> PeerView | None:
    return next((p for p in node.peers() if p.peer_id == peer_id), None)


async def _until(what: str, condition: Callable[[], object]) -> None:
    try:
        async with asyncio.timeout(BOUND_S):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


async def test_two_nodes_see_each_other_then_disconnect(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a_id, b_id = a.p2p_status().peer_id, b.p2p_status().peer_id  # type: ignore[union-attr]
    events = b.bus.subscribe(PeersChanged)
    assert not a.p2p_reachable()

    assert await b.connect_peer(_addr(a)) == a_id

    def a_seen_by_b() -> bool:
        view = _peer(b, a_id)
        return view is not None and view.info_state == "ok" and view.ping_ms is not None

    await _until("B's book to hold A's info and a ping", a_seen_by_b)
    await _until("A's book to hold B", lambda: _peer(a, b_id) is not None)
    seen_by_b, seen_by_a = _peer(b, a_id), _peer(a, b_id)
    assert seen_by_b is not None and seen_by_a is not None
    assert (seen_by_b.direction, seen_by_b.connected) == ("outbound", True)
    assert (seen_by_a.direction, seen_by_a.connected) == ("inbound", True)
    [model] = a.list_models()
    assert [(m.id, m.name) for m in seen_by_b.models] == [(model.sha256, model.name)]
    assert seen_by_b.version and seen_by_b.max_jobs == 0
    assert seen_by_b.ping_ms is not None and seen_by_b.ping_ms > 0
    assert any(addr.startswith("/ip4/127.0.0.1/tcp/") for addr in seen_by_b.addrs)
    await _until("A to count itself reachable", a.p2p_reachable)
    assert not b.p2p_reachable()  # B only dialled out: nobody has shown B is reachable
    async with asyncio.timeout(BOUND_S):
        event = await events.get()
    assert isinstance(event, PeersChanged) and a_id in [p.peer_id for p in event.peers]
    events.close()

    await b.disconnect_peer(a_id)

    def gone(node: Node, peer_id: str) -> bool:
        view = _peer(node, peer_id)
        return view is not None and not view.connected

    await _until("B to show A disconnected", lambda: gone(b, a_id))
    await _until("A to show B disconnected", lambda: gone(a, b_id))
    assert [a.action for a in b.recent_audit()][-2:] == ["connect peer", "disconnect peer"]

    with pytest.raises(PeerCommandError, match="not connected"):
        await b.disconnect_peer(a_id)
    with pytest.raises(PeerCommandError, match="not a multiaddr"):
        await b.connect_peer("127.0.0.1:4001")
    with pytest.raises(PeerCommandError, match="not a peer id"):
        await b.disconnect_peer("not-a-peer")

    def verdicts() -> list[str]:
        return [x.outcome.split(":")[0] for x in b.recent_audit()[-3:]]

    await _until("the three refusals in the audit", lambda: len(b.recent_audit()) >= 5)
    assert verdicts() == ["failed", "refused", "failed"]


async def test_a_bare_peer_is_listed_without_models_and_not_hammered(
    nodes: tuple[Node, Node], bare_host: HostHandle
) -> None:
    a, b = nodes
    b_id = b.p2p_status().peer_id  # type: ignore[union-attr]
    [bare_addr] = [x for x in bare_host.addrs() if x.startswith("/ip4/127.0.0.1/")]
    await a.connect_peer(bare_addr)
    await a.connect_peer(_addr(b))

    def answered_three_times() -> bool:
        view = _peer(a, b_id)
        return view is not None and view.info_queries >= 3

    await _until("A to ask node B for its info three times", answered_three_times)
    bare = _peer(a, bare_host.peer_id)
    assert bare is not None and bare.connected and bare.direction == "outbound"
    assert bare.info_state == "unsupported" and bare.models == ()
    assert "/fabstir/info/1.0.0" in bare.info_error
    assert bare.info_queries == 1  # asked once, not again every interval
    await _until("a ping answered by the bare host", lambda: _peer(a, bare_host.peer_id).ping_ms)  # type: ignore[union-attr]


async def test_peer_commands_refuse_clearly_when_p2p_is_off(tmp_path: Path, models: Path) -> None:
    node = Node(_config(tmp_path, "off", models, p2p=False))
    await node.start()
    try:
        with pytest.raises(PeerCommandError, match="P2P is off"):
            await node.connect_peer("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWxyz")
        with pytest.raises(PeerCommandError, match="P2P is off"):
            await node.disconnect_peer("12D3KooWxyz")
        assert node.peers() == ()
        await _until("the refusals in the audit", lambda: len(node.recent_audit()) >= 2)
        assert [x.outcome.split(":")[0] for x in node.recent_audit()[-2:]] == ["refused"] * 2
    finally:
        await node.stop()


async def test_announcements_update_prices_and_list_peers_heard_of_only_by_gossip(
    nodes: tuple[Node, Node], bare_host: HostHandle
) -> None:
    a, b = nodes
    [bare_addr] = [x for x in bare_host.addrs() if x.startswith("/ip4/127.0.0.1/")]
    bare_id = await a.connect_peer(bare_addr)  # never re-asked for info: nothing overwrites
    await _until("the bare peer in A's book", lambda: _peer(a, bare_id) is not None)
    [model] = b.list_models()
    assert model.sha256 is not None
    priced = PeerModel(model.sha256, model.name, 1234, "0x" + "ab" * 20)
    far_id = b.p2p_status().peer_id  # type: ignore[union-attr]  # known to A only by gossip
    service = a.p2p
    assert service is not None

    async def announce() -> None:  # trio side, as the GossipSub component calls it
        a.peer_book.on_announcement(bare_id, PeerAnnouncement(models=(priced,), max_jobs=3))
        a.peer_book.on_announcement(far_id, PeerAnnouncement(active_jobs=1))

    await service.bridge.run(announce)
    await _until("the announcements in A's book", lambda: _peer(a, far_id) is not None)
    seen, far = _peer(a, bare_id), _peer(a, far_id)
    assert seen is not None and far is not None
    assert seen.models == (priced,) and seen.max_jobs == 3 and seen.announced_at is not None
    assert seen.connected and seen.lowest_price() == priced
    assert not far.connected and far.direction == "unknown" and far.active_jobs == 1
