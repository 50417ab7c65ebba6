"""The peer book: every peer the node is or was connected to, kept fresh on the trio side.

Connections are learnt from the network's notifee (pushed through an unbounded channel, never
awaited inside the library's callback) and reconciled against the swarm every few seconds in
case a callback was missed. Each connected peer gets one watcher task that asks
`/fabstir/info/1.0.0` on connect and every `peer_info_interval_s`, and pings it every
`ping_interval_s`. A peer that does not speak the info protocol is marked so and not asked again
until it reconnects. Snapshots are published on the node's bus at most `1/PUBLISH_GAP_S` times
a second; the engine never imports Textual.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import trio

from fabstir_tui.engine.events import (
    EventBus,
    InfoState,
    PeerModel,
    PeersChanged,
    PeerView,
)
from fabstir_tui.engine.p2p.messages import INFO_PROTOCOL
from fabstir_tui.engine.p2p.peer_notifee import (
    ConnEvent,
    direction_of,
    make_notifee,
    other_connections,
    transport_addrs,
)
from fabstir_tui.engine.p2p.peer_probe import (
    ProbeError,
    ProtocolUnsupported,
    ping_peer,
    query_peer_info,
)

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from fabstir_tui.config import P2pSection
    from fabstir_tui.engine.p2p.bridge import TrioBridge
    from fabstir_tui.engine.p2p.messages import InfoResponse

_log = logging.getLogger(__name__)

PUBLISH_GAP_S = 0.25
RECONCILE_S = 2.0
PROBE_TIMEOUT_S = 10.0
MAX_PEERS = 1000
# Probes run a few at a time: a burst of newcomers must not double the node's stream
# negotiations (FIELD-NOTES: 150 simultaneous peers already time out on the raw library).
PROBES_AT_ONCE = 8
IDENTIFY_WAIT_S = 3.0  # identify usually lands within ms of the connection
# Gone peers stay listed this long; ones that never answered info (throwaway clients) less.
KEEP_GONE_S = 600.0
KEEP_GONE_UNKNOWN_S = 60.0


@dataclass(frozen=True, slots=True)
class PeerAnnouncement:
    """What a GossipSub price/capacity announcement says about its sender; `models` replaces
    the prices learnt from the info answer, None fields leave what is known unchanged."""

    models: tuple[PeerModel, ...] = ()
    max_jobs: int | None = None
    active_jobs: int | None = None
    addrs: tuple[str, ...] = ()


@dataclass(slots=True)
class _Peer:
    """Mutable trio-side record; `view` freezes it for the bus."""

    view: PeerView
    conn_addrs: tuple[str, ...] = ()
    next_info: float = 0.0  # trio clock
    watcher: trio.CancelScope | None = None
    generation: int = 0


def _models_of(info: InfoResponse) -> tuple[PeerModel, ...]:
    return tuple(PeerModel(m.id, m.name, m.price_per_million, m.price_token) for m in info.models)


class PeerBook:
    """A P2PComponent (name `peer-book`); `snapshot()` and `inbound_seen` are safe from asyncio."""

    name = "peer-book"

    def __init__(self, p2p: P2pSection, bus: EventBus | None) -> None:
        self.ping_interval_s = p2p.ping_interval_s
        self.info_interval_s = p2p.peer_info_interval_s
        self.probe_timeout_s = PROBE_TIMEOUT_S
        self._bus = bus
        self._peers: dict[str, _Peer] = {}
        self._latest = PeersChanged(peers=())
        self._host: Any = None
        self._bridge: TrioBridge | None = None
        self._nursery: trio.Nursery | None = None
        self._dirty: trio.Event | None = None
        self._send: trio.MemorySendChannel[ConnEvent] | None = None
        self._probe_slots: trio.CapacityLimiter | None = None
        self.missed_by_notifee = 0  # changes only the reconcile pass saw (measured in tests)

    # --- asyncio-safe reads ---------------------------------------------------------------

    def snapshot(self) -> tuple[PeerView, ...]:
        """The newest published peer list (connected first)."""
        return self._latest.peers

    @property
    def latest(self) -> PeersChanged:
        """The newest published event, reachability included."""
        return self._latest

    @property
    def inbound_seen(self) -> bool:
        """True once any peer dialled us: someone could reach our listen address."""
        return self._latest.inbound_seen

    # --- attach (trio side) ---------------------------------------------------------------

    async def attach(self, host: IHost, bridge: TrioBridge, nursery: trio.Nursery) -> None:
        """Register the notifee, seed the current connections, start the background tasks."""
        self._host, self._bridge, self._nursery = host, bridge, nursery
        self._dirty = trio.Event()
        self._probe_slots = trio.CapacityLimiter(PROBES_AT_ONCE)
        send, receive = trio.open_memory_channel[ConnEvent](math.inf)
        self._send = send
        host.get_network().register_notifee(make_notifee(send))
        for conns in host.get_network().get_connections_map().values():
            for conn in conns:
                self._connected(conn)
        nursery.start_soon(self._consume, receive)
        nursery.start_soon(self._reconcile_loop)
        nursery.start_soon(self._publish_loop)

    # --- announcements (GossipSub, announce.py) -----------------------------------------------

    def on_announcement(self, peer_id: str, announcement: PeerAnnouncement) -> None:
        """Trio side, synchronous: fold a price/capacity announcement into the peer's entry
        (creating a not-connected entry for a peer heard of only through gossip)."""
        now = time.time()
        peer = self._peers.get(peer_id)
        if peer is None:
            view = PeerView(peer_id, announcement.addrs, "unknown", False, now, now)
            peer = self._add(peer_id, view)
        v = peer.view
        peer.view = replace(
            v,
            addrs=v.addrs or announcement.addrs,
            models=announcement.models or v.models,
            max_jobs=v.max_jobs if announcement.max_jobs is None else announcement.max_jobs,
            active_jobs=(
                v.active_jobs if announcement.active_jobs is None else announcement.active_jobs
            ),
            announced_at=now,
            last_seen=now,
        )
        self._mark_dirty()

    # --- connections ----------------------------------------------------------------------

    async def _consume(self, receive: trio.MemoryReceiveChannel[ConnEvent]) -> None:
        async for _kind, conn, up in receive:
            try:
                if up:
                    self._connected(conn)
                else:
                    self._disconnected(str(conn.muxed_conn.peer_id), conn)
            except Exception as exc:  # a malformed conn object must not end the book
                _log.warning("peer book skipped a connection event: %s", exc)

    def _connected(self, conn: Any) -> None:
        peer_id = str(conn.muxed_conn.peer_id)
        direction = direction_of(conn)
        addrs = tuple(str(a) for a in transport_addrs(conn))
        now = time.time()
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._add(peer_id, PeerView(peer_id, addrs, direction, True, now, now))
        elif peer.view.connected and peer.watcher is not None:
            return  # a second notification of the same connection
        else:
            peer.view = replace(
                peer.view, direction=direction, connected=True, last_seen=now, ping_error=""
            )
            if peer.view.info_state == "unsupported":  # a reconnect may be a new version
                peer.view = replace(peer.view, info_state="pending")
        peer.conn_addrs = addrs
        peer.view = replace(peer.view, addrs=self._addrs(peer_id, addrs))
        peer.next_info = 0.0
        peer.generation += 1
        if self._nursery is not None:
            self._nursery.start_soon(self._watch, peer_id, conn.muxed_conn.peer_id, peer.generation)
        self._mark_dirty()

    def _disconnected(self, peer_id: str, conn: Any = None) -> None:
        peer = self._peers.get(peer_id)
        if peer is None or not peer.view.connected:
            return
        if conn is not None and other_connections(self._host, conn):
            return  # another connection to the same peer is still up
        peer.view = replace(peer.view, connected=False, last_seen=time.time())
        if peer.watcher is not None:
            peer.watcher.cancel()
            peer.watcher = None
        self._mark_dirty()

    async def _reconcile_loop(self) -> None:
        """Safety net for a missed notifee callback: compare with the swarm's own map."""
        while True:
            await trio.sleep(RECONCILE_S)
            try:
                live = self._host.get_network().get_connections_map()
                live_ids = {str(p) for p in live}
                for peer_id, conns in live.items():
                    peer = self._peers.get(str(peer_id))
                    if conns and (peer is None or not peer.view.connected):
                        self.missed_by_notifee += 1
                        self._connected(conns[0])
                for peer_id, peer in list(self._peers.items()):
                    if peer.view.connected and peer_id not in live_ids:
                        self.missed_by_notifee += 1
                        self._disconnected(peer_id)
                self._forget_gone(time.time())
            except Exception as exc:  # the swarm is closing
                _log.debug("peer book reconcile skipped: %s", exc)

    def _forget_gone(self, now: float) -> None:
        """Drop peers gone for long (sooner when they never told us who they are)."""
        for peer_id, peer in list(self._peers.items()):
            v = peer.view
            keep = KEEP_GONE_S if v.info_state == "ok" else KEEP_GONE_UNKNOWN_S
            if not v.connected and now - v.last_seen > keep:
                del self._peers[peer_id]
                self._mark_dirty()

    def _add(self, peer_id: str, view: PeerView) -> _Peer:
        if len(self._peers) >= MAX_PEERS:
            gone = sorted(
                (p for p in self._peers.values() if not p.view.connected),
                key=lambda p: p.view.last_seen,
            )
            for old in gone[: len(self._peers) - MAX_PEERS + 1]:
                del self._peers[old.view.peer_id]
        peer = _Peer(view)
        self._peers[peer_id] = peer
        return peer

    def _addrs(self, peer_id: str, conn_addrs: tuple[str, ...]) -> tuple[str, ...]:
        """The peer's listen addresses from identify (the peerstore), then the connection's."""
        found: list[str] = []
        try:
            from libp2p.peer.id import ID

            found = [str(a) for a in self._host.get_peerstore().addrs(ID.from_base58(peer_id))]
        except Exception:  # no peerstore entry yet
            found = []
        suffix = f"/p2p/{peer_id}"  # the peer id is shown on its own; one form per address
        return tuple(dict.fromkeys(a.removesuffix(suffix) for a in (*found, *conn_addrs)))

    # --- per-peer watcher -----------------------------------------------------------------

    async def _watch(self, peer_id: str, pid: Any, generation: int) -> None:
        """Info on connect and every info interval, a ping every ping interval, until the peer
        disconnects (its scope is cancelled) or a newer connection replaces this watcher."""
        peer = self._peers.get(peer_id)
        if peer is None or peer.generation != generation:
            return
        with trio.CancelScope() as scope:
            if peer.watcher is not None:
                peer.watcher.cancel()
            peer.watcher = scope
            next_ping = 0.0
            try:
                while peer.view.connected and peer.generation == generation:
                    wants_info = peer.view.info_state != "unsupported"
                    if wants_info and trio.current_time() >= peer.next_info:
                        await self._ask_info(peer, pid)
                    if trio.current_time() >= next_ping:
                        await self._ping(peer, pid)
                        next_ping = trio.current_time() + self.ping_interval_s
                    wants_info = peer.view.info_state != "unsupported"
                    await trio.sleep_until(
                        min(next_ping, peer.next_info) if wants_info else next_ping
                    )
            except Exception as exc:  # a watcher must never take the nursery down
                _log.warning("peer watcher for %s ended: %s", peer_id, exc)
        if peer.watcher is scope:
            peer.watcher = None

    async def _ask_info(self, peer: _Peer, pid: Any) -> None:
        state: InfoState
        queries = peer.view.info_queries + 1
        assert self._probe_slots is not None
        try:
            if not await self._may_speak_info(pid):
                raise ProtocolUnsupported(f"identify lists no {INFO_PROTOCOL} (a client?)")
            async with self._probe_slots:
                info = await query_peer_info(
                    self._host, pid, self.probe_timeout_s, connected_only=True
                )
        except ProtocolUnsupported as exc:
            state, error = "unsupported", str(exc)
            peer.view = replace(peer.view, info_state=state, info_error=error, info_queries=queries)
        except ProbeError as exc:
            peer.next_info = trio.current_time() + self.info_interval_s
            peer.view = replace(
                peer.view, info_state="failed", info_error=str(exc), info_queries=queries
            )
        else:
            peer.next_info = trio.current_time() + self.info_interval_s
            now = time.time()
            gpu = info.gpu
            peer.view = replace(
                peer.view,
                info_state="ok",
                info_error="",
                info_queries=queries,
                info_at=now,
                last_seen=now,
                models=_models_of(info),
                version=info.version,
                api_url=info.api_url,
                chain_address=info.chain_address,
                gpu_name=gpu.name if gpu is not None else "",
                gpu_vram_mib=gpu.vram_mib if gpu is not None else None,
                gpu_count=gpu.count if gpu is not None else 0,
                max_jobs=info.capacity.max_jobs,
                active_jobs=info.capacity.active_jobs,
            )
        peer.view = replace(peer.view, addrs=self._addrs(peer.view.peer_id, peer.conn_addrs))
        self._mark_dirty()

    async def _may_speak_info(self, pid: Any) -> bool:
        """False once identify has listed the peer's protocols without ours: clients (a burst of
        them after all) are not probed with a stream each and log no failed negotiation."""
        deadline = trio.current_time() + IDENTIFY_WAIT_S
        while True:
            try:
                protocols = self._host.get_peerstore().get_protocols(pid)
            except Exception:  # no record yet
                protocols = []
            if protocols:
                return INFO_PROTOCOL in protocols
            if trio.current_time() >= deadline:
                return True  # identify never answered: ask and find out
            await trio.sleep(0.1)

    async def _ping(self, peer: _Peer, pid: Any) -> None:
        assert self._probe_slots is not None
        try:
            async with self._probe_slots:
                rtt = await ping_peer(self._host, pid, self.probe_timeout_s)
        except ProbeError as exc:
            peer.view = replace(peer.view, ping_error=str(exc))
        else:
            peer.view = replace(peer.view, ping_ms=rtt, ping_error="", last_seen=time.time())
        self._mark_dirty()

    # --- publishing -----------------------------------------------------------------------

    def _mark_dirty(self) -> None:
        if self._dirty is not None:
            self._dirty.set()

    def _build(self) -> PeersChanged:
        views = sorted(
            (p.view for p in self._peers.values()),
            key=lambda v: (not v.connected, v.first_seen, v.peer_id),
        )
        inbound = self._latest.inbound_seen or any(
            v.direction == "inbound" for v in views if v.connected
        )
        return PeersChanged(peers=tuple(views), inbound_seen=inbound)

    async def _publish_loop(self) -> None:
        """At most one PeersChanged per PUBLISH_GAP_S, always the newest state."""
        while True:
            assert self._dirty is not None
            await self._dirty.wait()
            self._dirty = trio.Event()
            self._latest = event = self._build()
            if self._bus is not None and self._bridge is not None:
                try:
                    self._bridge.to_asyncio(self._bus.publish, event)
                except Exception as exc:  # the loop is gone while stopping
                    _log.debug("peer book could not publish: %s", exc)
            await trio.sleep(PUBLISH_GAP_S)
