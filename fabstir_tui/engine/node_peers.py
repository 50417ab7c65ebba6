"""The node's peer commands: the peer book's snapshot and the operator's connect and
disconnect (both audited). A mixin of Node, kept apart so node.py stays about the lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir_tui.config import Config
from fabstir_tui.engine.events import PeerView
from fabstir_tui.engine.p2p.peer_book import PeerBook
from fabstir_tui.engine.p2p.peer_probe import ProbeError, dial, hang_up
from fabstir_tui.engine.p2p.service import P2PService

if TYPE_CHECKING:
    from fabstir_tui.engine.node import Node

PEER_DIAL_TIMEOUT_S = 15.0


class PeerCommandError(Exception):
    """An operator's connect/disconnect could not be done; the message says why."""


class PeerCommands:
    """Peer commands for Node."""

    config: Config
    peer_book: PeerBook
    _p2p: P2PService | None

    def _node(self) -> Node:
        """This object as the Node it is mixed into (its audit)."""
        from fabstir_tui.engine.node import Node

        assert isinstance(self, Node)
        return self

    def peers(self) -> tuple[PeerView, ...]:
        """The newest peer book snapshot (connected peers first); empty while P2P is off."""
        return self.peer_book.snapshot()

    def p2p_reachable(self) -> bool:
        """True once another node dialled us: evidence our listen address is reachable."""
        return self.peer_book.inbound_seen

    def _p2p_refusal(self) -> str | None:
        if not self.config.p2p.enabled:
            return "P2P is off (set p2p.enabled = true in the config)"
        if self._p2p is None or self._p2p.host is None:
            return "P2P is not running (it failed to start or the node is stopped; see the log)"
        return None

    async def connect_peer(self, multiaddr: str) -> str:
        """Dial a peer by its full multiaddr (with /p2p/<id>); returns its peer id. Audited."""
        from fabstir_tui.client.p2p import P2PAddressError, parse_peer_addr

        refusal = self._p2p_refusal()
        if refusal is not None:
            self._node().record_action("connect peer", multiaddr, f"refused: {refusal}")
            raise PeerCommandError(refusal)
        try:
            _info, peer_id = parse_peer_addr(multiaddr)
        except P2PAddressError as exc:
            self._node().record_action("connect peer", multiaddr, f"refused: {exc}")
            raise PeerCommandError(str(exc)) from None
        service = self._p2p
        assert service is not None
        try:
            await service.bridge.run(dial, service.host, multiaddr, PEER_DIAL_TIMEOUT_S)
        except ProbeError as exc:
            self._node().record_action("connect peer", multiaddr, f"failed: {exc}")
            raise PeerCommandError(f"could not connect to {peer_id}: {exc}") from None
        self._node().record_action("connect peer", multiaddr, "connected")
        return peer_id

    async def disconnect_peer(self, peer_id: str) -> None:
        """Close our connection to a peer (it may dial again). Audited."""
        refusal = self._p2p_refusal()
        if refusal is not None:
            self._node().record_action("disconnect peer", peer_id, f"refused: {refusal}")
            raise PeerCommandError(refusal)
        service = self._p2p
        assert service is not None
        try:
            await service.bridge.run(hang_up, service.host, peer_id)
        except ProbeError as exc:
            self._node().record_action("disconnect peer", peer_id, f"failed: {exc}")
            raise PeerCommandError(str(exc)) from None
        self._node().record_action("disconnect peer", peer_id, "disconnected")
