"""How the peer book hears about connections: a notifee that only queues, and readers of
libp2p's connection objects (direction, transport addresses) that tolerate their variants."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from fabstir_tui.engine.events import PeerDirection

# (kind, connection, up): "conn" events from the notifee; up is False on a disconnect.
ConnEvent = tuple[str, Any, bool]


def direction_of(conn: Any) -> PeerDirection:
    """Who dialled: libp2p's Direction is an IntEnum (INBOUND = 0), so read its name."""
    name = str(getattr(getattr(conn, "direction", None), "name", "")).lower()
    if name == "inbound":
        return "inbound"
    return "outbound" if name == "outbound" else "unknown"


def other_connections(host: Any, conn: Any) -> bool:
    """Whether the peer of `conn` still has another open connection."""
    try:
        conns = host.get_network().get_connections(conn.muxed_conn.peer_id)
    except Exception:  # the swarm is closing
        return False
    return any(c is not conn and not c.is_closed for c in conns)


def transport_addrs(conn: Any) -> list[Any]:
    try:
        return list(conn.get_transport_addresses())
    except Exception:  # not every connection type records it
        return []


def make_notifee(send: trio.MemorySendChannel[ConnEvent]) -> Any:
    """An INotifee that only queues (send_nowait on an unbounded channel): the swarm awaits
    notifees inline on its connection path, so nothing here may block."""
    from libp2p.abc import INotifee

    class _BookNotifee(INotifee):
        async def connected(self, network: Any, conn: Any) -> None:
            push_event(send, ("conn", conn, True))

        async def disconnected(self, network: Any, conn: Any) -> None:
            push_event(send, ("conn", conn, False))

        async def opened_stream(self, network: Any, stream: Any) -> None:
            return None

        async def closed_stream(self, network: Any, stream: Any) -> None:
            return None

        async def listen(self, network: Any, multiaddr: Any) -> None:
            return None

        async def listen_close(self, network: Any, multiaddr: Any) -> None:
            return None

    return _BookNotifee()


def push_event(send: trio.MemorySendChannel[ConnEvent], item: ConnEvent) -> None:
    with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        send.send_nowait(item)  # closed only once the book was cancelled
