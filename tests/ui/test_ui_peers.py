"""Peers screen over real nodes on 127.0.0.1: a second node started by the test is listed with
its models, `/` filters, Enter opens the detail, `c` connects, `d` disconnects, and the header
counts peers and says what is known of our reachability."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Input, Label, Static
from ui_helpers import make_config, wait_for

from fabstir_tui.config import Config, P2pSection
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.bridge import TrioBridge
from fabstir_tui.engine.p2p.host import HostConfig, HostHandle
from fabstir_tui.ui.app import FabstirApp
from fabstir_tui.ui.peer_format import short_peer
from fabstir_tui.ui.screens.peer_dialogs import (
    ConnectPeerScreen,
    DisconnectPeerScreen,
    PeerDetailScreen,
)
from fabstir_tui.ui.screens.peers import PeersScreen
from fabstir_tui.ui.widgets.status_header import StatusHeader

LOCAL = "/ip4/127.0.0.1/tcp/0"

pytestmark = pytest.mark.slow


def p2p_config(tmp_path: Path, models_dir: Path, name: str) -> Config:
    base = make_config(tmp_path / name, models_dir, name=name)
    # No DHT: its routing refreshes dial known peers again, which could undo the `d` under
    # test (a busy machine made that race real); the Peers screen needs only connections.
    p2p = P2pSection(
        enabled=True, listen_addrs=[LOCAL], ping_interval_s=1, peer_info_interval_s=5, dht=False
    )
    return base.model_copy(update={"p2p": p2p})


@pytest.fixture
async def other_node(tmp_path: Path, models_dir: Path) -> AsyncIterator[Node]:
    """The second node: serves the same tiny model over P2P."""
    node = Node(p2p_config(tmp_path, models_dir, "other-node"))
    await node.start()
    try:
        async with asyncio.timeout(60):
            while any(m.sha256 is None for m in node.list_models()):
                await asyncio.sleep(0.05)
        yield node
    finally:
        await node.stop()


@pytest.fixture
async def bare_host(tmp_path: Path) -> AsyncIterator[HostHandle]:
    """A plain libp2p host without the fabstir protocols (no models to show)."""
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


def local_addr(addrs: list[str] | tuple[str, ...]) -> str:
    return next(a for a in addrs if a.startswith("/ip4/127.0.0.1/"))


def header_text(app: FabstirApp) -> str:
    return str(app.screen.query_one(StatusHeader).render())


def rows(screen: PeersScreen) -> list[str]:
    return [str(k.value) for k in screen.table.rows]


def cell(screen: PeersScreen, peer_id: str, column: str) -> str:
    return str(screen.table.get_cell(peer_id, column).plain)


async def type_text(pilot: Pilot[object], text: str) -> None:
    for ch in text:
        await pilot.press(ch)


async def test_peers_screen_lists_filters_details_and_disconnects(
    tmp_path: Path, models_dir: Path, other_node: Node, bare_host: HostHandle
) -> None:
    config = p2p_config(tmp_path, models_dir, "ui-node")
    node = Node(config)
    app = FabstirApp(node, config)
    other = other_node.p2p_status()
    assert other is not None
    [model] = other_node.list_models()
    assert model.sha256 is not None
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, lambda: node.p2p_status() is not None, "our P2P host")
            await wait_for(pilot, lambda: "P2P 0 peers" in header_text(app), "the P2P header")
            assert "reach unknown" in header_text(app)
            await pilot.press("3")
            await wait_for(pilot, lambda: isinstance(app.screen, PeersScreen), "Peers screen")
            peers = app.screen
            assert isinstance(peers, PeersScreen)

            # c: connect to the other node through the dialog
            await pilot.press("c")
            await wait_for(pilot, lambda: isinstance(app.screen, ConnectPeerScreen), "dialog")
            app.screen.query_one(Input).value = local_addr(other.listen_addrs)
            await pilot.press("enter")
            await wait_for(
                pilot,
                lambda: other.peer_id in rows(peers)
                and cell(peers, other.peer_id, "models").startswith("1: "),
                "the other node listed with its model",
            )
            assert model.name in cell(peers, other.peer_id, "models")
            assert cell(peers, other.peer_id, "dir") == "out"
            assert any(a.action == "connect peer" for a in node.recent_audit())

            # an inbound peer (a bare host dialling us) makes us reachable; it has no models
            our_addr = local_addr(node.p2p_status().listen_addrs)  # type: ignore[union-attr]
            await bare_host.connect(our_addr)
            await wait_for(pilot, lambda: len(rows(peers)) == 2, "two peers listed")
            await wait_for(pilot, lambda: "P2P 2 peers reachable" in header_text(app), "header")
            await wait_for(
                pilot, lambda: cell(peers, bare_host.peer_id, "models") == "no info", "no info"
            )
            assert cell(peers, bare_host.peer_id, "dir") == "in"

            # /: filter by model name narrows to the other node, by peer id to the bare host
            await pilot.press("slash")
            await type_text(pilot, model.name[:6])
            await wait_for(pilot, lambda: rows(peers) == [other.peer_id], "filtered by model")
            peers.query_one("#peers-filter", Input).value = bare_host.peer_id[-8:]
            await wait_for(pilot, lambda: rows(peers) == [bare_host.peer_id], "by peer id")
            await pilot.press("escape")
            await wait_for(pilot, lambda: len(rows(peers)) == 2, "filter cleared")

            # Enter: the detail lists the model with its id and price
            peers.table.move_cursor(row=rows(peers).index(other.peer_id))
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, PeerDetailScreen), "detail")
            detail = "\n".join(str(s.render()) for s in app.screen.query(Static))
            assert other.peer_id in detail and model.sha256 in detail
            assert f"{model.name}  0/M tokens" in detail
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is peers, "back on the Peers screen")

            # d: disconnect the selected peer after confirming
            peers.table.move_cursor(row=rows(peers).index(other.peer_id))
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, DisconnectPeerScreen), "confirm")
            await pilot.press("y")
            await wait_for(
                pilot, lambda: cell(peers, other.peer_id, "ping") == "gone", "shown disconnected"
            )
            assert not next(p for p in node.peers() if p.peer_id == other.peer_id).connected
            await wait_for(pilot, lambda: "P2P 1 peer " in header_text(app), "header count")
            assert any(a.action == "disconnect peer" for a in node.recent_audit())
            assert short_peer(other.peer_id) == cell(peers, other.peer_id, "peer")
    finally:
        await node.stop()


def inside(screen: Screen[object], selector: str) -> bool:
    region = screen.query_one(selector).region
    return bool(region.width and region.height) and screen.region.contains_region(region)


async def test_peers_screen_fits_80x24_and_says_p2p_is_off(
    node_for: Callable[..., Node],
) -> None:
    node = node_for()  # P2P is off unless the config turns it on
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: node.state == "running", "the node")
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, PeersScreen), "Peers screen")
        screen = app.screen
        for selector in ("StatusHeader", "#peers-self", "#peers-filter", "#peers-table", "Footer"):
            await wait_for(pilot, lambda s=selector: inside(screen, s), f"{selector} inside 80x24")
        assert header_text(app).endswith("P2P off")
        assert "P2P is off" in str(screen.query_one("#peers-self", Label).render())

        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConnectPeerScreen), "dialog")
        assert inside(app.screen, "#peer-connect")
        app.screen.query_one(Input).value = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWxyz"
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: any(
                a.action == "connect peer" and a.outcome.startswith("refused: P2P is off")
                for a in node.recent_audit()
            ),
            "the refused connect in the audit",
        )
        await wait_for(
            pilot,
            lambda: any("P2P is off" in str(n.message) for n in app._notifications),
            "the refusal told on screen",
        )
