"""Kademlia discovery (DESIGN §5, §11.2): provider records per served model and a signed info
record, on a private DHT that speaks `/fabstir/kad/1.0.0`.

Keys: see dht_lookup.py (models) and info_record.py (info records).

Library notes (libp2p 0.8.1): KadDHT ignores `protocol_prefix` on the wire and always speaks
`/ipfs/kad/1.0.0`, so `use_fabstir_kad_protocol` points the module constants at our protocol;
KadDHT does not add connected peers to its routing table by itself (only peers that open a KAD
stream to it), so a task adds connected peers that identify says speak our KAD protocol;
find_providers returns duplicates, so results are merged per peer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from fabstir_tui.engine.p2p.dht_lookup import HostFound, lookup_model, model_key
from fabstir_tui.engine.p2p.info_record import (
    NAMESPACE,
    InfoRecordValidator,
    info_record_key,
    sign_info_record,
)
from fabstir_tui.engine.p2p.messages import InfoResponse

if TYPE_CHECKING:
    from libp2p.abc import IHost
    from libp2p.kad_dht.kad_dht import KadDHT

    from fabstir_tui.engine.events import LogLevel
    from fabstir_tui.engine.node import Node
    from fabstir_tui.engine.p2p.bridge import TrioBridge
    from fabstir_tui.engine.p2p.component import P2PComponent

_log = logging.getLogger(__name__)
T = TypeVar("T")

KAD_PROTOCOL = "/fabstir/kad/1.0.0"
PROTOCOL_PREFIX = "/fabstir"
PEER_SYNC_INTERVAL_S = 1.0
CHANGE_POLL_S = 2.0
RECORD_MIN_GAP_S = 5.0
_TABLE_GROWTH_LIMIT = 20  # re-provide when the table grows, until it holds a full bucket


def use_fabstir_kad_protocol() -> None:
    """Make KadDHT speak `/fabstir/kad/1.0.0`: 0.8.1 hard-codes `/ipfs/kad/1.0.0` in five
    modules and ignores `protocol_prefix`, which would merge us into any IPFS DHT we touch."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht import common, kad_dht, peer_routing, provider_store, value_store

    for module in (common, kad_dht, peer_routing, provider_store, value_store):
        module.PROTOCOL_ID = TProtocol(KAD_PROTOCOL)  # type: ignore[attr-defined]


def build_dht(host: IHost, server: bool) -> KadDHT:
    """A KadDHT on `host` that accepts only signed info records (`fabstir` namespace), strictly."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.records.validator import NamespacedValidator

    use_fabstir_kad_protocol()
    validator = NamespacedValidator(
        {NAMESPACE: InfoRecordValidator()},  # type: ignore[dict-item]
        strict_validation=True,
    )
    return KadDHT(
        host,
        DHTMode.SERVER if server else DHTMode.CLIENT,
        validator=validator,
        validator_changed=True,
        protocol_prefix=TProtocol(PROTOCOL_PREFIX),
        strict_validation=True,
    )


async def call_on_loop(bridge: TrioBridge, fn: Callable[[], T]) -> T:
    """From trio, run the plain callable `fn` on the asyncio loop and return its result."""

    async def run() -> T:
        return fn()

    return await bridge.call_asyncio(run)


async def add_peer_to_table(dht: KadDHT, peer: Any) -> bool:
    """Put a peer we know speaks our KAD protocol (a bootstrap peer) in the routing table."""
    return bool(await dht.add_peer(peer, skip_server_mode_check=True))


async def sync_routing_table(host: IHost, dht: KadDHT) -> int:
    """Add every connected peer that identify says serves our KAD protocol, drop table peers
    that identify says do not (KadDHT adds any peer that opens a KAD stream, clients too);
    returns how many were added."""
    added = 0
    store = host.get_peerstore()
    for peer in dht.routing_table.get_peer_ids():
        try:
            protocols = store.get_protocols(peer) or []
        except Exception:  # not identified yet
            continue
        if protocols and KAD_PROTOCOL not in protocols:
            dht.routing_table.remove_peer(peer)
    for peer in host.get_connected_peers():
        if dht.routing_table.peer_in_table(peer):
            continue
        try:
            protocols = store.get_protocols(peer) or []
        except Exception:  # not identified yet
            continue
        if KAD_PROTOCOL in protocols and await add_peer_to_table(dht, peer):
            added += 1
    return added


def server_peer_count(host: IHost, dht: KadDHT) -> int:
    """Routing-table peers that identify says serve our KAD protocol (clients excluded)."""
    store = host.get_peerstore()
    count = 0
    for peer in dht.routing_table.get_peer_ids():
        try:
            protocols = store.get_protocols(peer) or []
        except Exception:  # not identified yet
            continue
        count += KAD_PROTOCOL in protocols
    return count


class DhtDiscovery:
    """Node component: KadDHT server, provider records for served models, signed info record."""

    name = "dht"

    def __init__(
        self,
        info_provider: Callable[[], InfoResponse],
        *,
        reprovide_interval_s: float = 600.0,
        change_poll_s: float = CHANGE_POLL_S,
        log: Callable[[LogLevel, str, str], None] | None = None,
    ) -> None:
        self._info_provider = info_provider
        self.reprovide_interval_s = reprovide_interval_s
        self.change_poll_s = change_poll_s
        self._log_fn = log
        self.dht: KadDHT | None = None
        self._host: IHost | None = None
        self._bridge: TrioBridge | None = None
        self._seq = 0
        self.provided: frozenset[str] = frozenset()  # model ids of the last provide round
        self.provide_rounds = 0
        self.records_put = 0

    async def attach(self, host: IHost, bridge: TrioBridge, nursery: trio.Nursery) -> None:
        """Start the DHT service and the peer-sync and provide loops."""
        self._host, self._bridge = host, bridge
        self.dht = build_dht(host, server=True)
        await nursery.start(self._run_dht, self.dht)
        nursery.start_soon(self._sync_loop, host, self.dht)
        nursery.start_soon(self._provide_loop, host, self.dht)

    async def find(self, model_id: str) -> list[HostFound]:
        """Trio side: the hosts that provide `model_id` (ourselves included when we do)."""
        if self.dht is None or self._host is None:
            raise RuntimeError("the DHT component is not attached")
        return await lookup_model(self.dht, self._host, model_id)

    # --- trio side -----------------------------------------------------------------------

    @staticmethod
    async def _run_dht(dht: KadDHT, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.tools.anyio_service import background_trio_service

        async with background_trio_service(dht):
            task_status.started()
            await trio.sleep_forever()

    def _say(self, level: LogLevel, message: str) -> None:
        if self._log_fn is not None and self._bridge is not None:
            try:
                self._bridge.to_asyncio(self._log_fn, level, "dht", message)
                return
            except Exception:  # the loop is gone while stopping
                pass
        _log.log(logging.WARNING if level in ("warning", "error") else logging.DEBUG, message)

    async def _sync_loop(self, host: IHost, dht: KadDHT) -> None:
        while True:
            try:
                await sync_routing_table(host, dht)
            except Exception as exc:  # never into the nursery
                _log.debug("routing table sync failed: %s", exc)
            await trio.sleep(PEER_SYNC_INTERVAL_S)

    async def _current_info(self) -> InfoResponse | None:
        assert self._bridge is not None
        try:
            return await call_on_loop(self._bridge, self._info_provider)
        except Exception as exc:  # the node could not describe itself this round
            self._say("warning", f"could not read the served models: {exc}")
            return None

    async def _provide_loop(self, host: IHost, dht: KadDHT) -> None:
        last_info: InfoResponse | None = None
        last_provide = last_record = -float("inf")  # trio.current_time() may start near 0
        last_table = 0
        while True:
            info = await self._current_info()
            if info is not None:
                models = frozenset(m.id.lower().removeprefix("0x") for m in info.models)
                table = server_peer_count(host, dht)  # a client passing by is no reason
                now = trio.current_time()
                grew = table > last_table and last_table < _TABLE_GROWTH_LIMIT
                due = now - last_provide >= self.reprovide_interval_s
                forced = models != self.provided or grew or due
                if forced:
                    await self._provide_all(dht, models)
                    last_provide, last_table = now, table
                # The record goes out with every provide round and when the info changes
                # (prices, capacity), at most once per RECORD_MIN_GAP_S for changes alone.
                changed = info != last_info and now - last_record >= RECORD_MIN_GAP_S
                if (forced or changed) and await self._put_record(host, dht, info):
                    last_info, last_record = info, now
            await trio.sleep(self.change_poll_s)

    async def _provide_all(self, dht: KadDHT, models: frozenset[str]) -> None:
        for model_id in sorted(models):
            try:
                await dht.provider_store.provide(model_key(model_id))
            except Exception as exc:  # one model failing must not stop the others
                self._say("warning", f"could not provide model {model_id[:12]}: {exc}")
        if models != self.provided:
            self._say("info", f"providing {len(models)} model(s) in the DHT")
        self.provided = models
        self.provide_rounds += 1

    async def _put_record(self, host: IHost, dht: KadDHT, info: InfoResponse) -> bool:
        peer = str(host.get_id())
        self._seq = max(self._seq + 1, time.time_ns() // 1_000_000)
        addrs = [str(a) for a in host.get_addrs()]
        try:
            value = sign_info_record(host.get_private_key(), peer, info, addrs, self._seq)
            await dht.put_value(info_record_key(peer), value)
        except Exception as exc:  # a DHT put failing is retried next round
            self._say("warning", f"could not publish the info record: {exc}")
            return False
        self.records_put += 1
        return True


def node_discovery_components(node: Node) -> list[P2PComponent]:
    """The discovery components the node's config asks for: DHT, announcements, mDNS."""
    from fabstir_tui.engine.events import PeerModel
    from fabstir_tui.engine.p2p.announce import Announcement, Announcer
    from fabstir_tui.engine.p2p.mdns import MdnsDiscovery
    from fabstir_tui.engine.p2p.peer_book import PeerAnnouncement
    from fabstir_tui.engine.p2p.service import node_info, package_version

    p2p = node.config.p2p
    version = package_version()

    def info() -> InfoResponse:
        return node_info(
            node.snapshot(), node.chain_status(), p2p.api_url, version, node.models.slot_totals()
        )

    components: list[P2PComponent] = []
    if p2p.dht:
        components.append(
            DhtDiscovery(info, reprovide_interval_s=p2p.reprovide_interval_s, log=node.log)
        )
    book = node.peer_book

    def to_book(peer_id: str, announcement: Announcement) -> None:
        models = tuple(
            PeerModel(m.id, m.name, m.price_per_million, m.price_token) for m in announcement.models
        )
        book.on_announcement(
            peer_id,
            PeerAnnouncement(
                models=models,
                max_jobs=announcement.max_jobs,
                active_jobs=announcement.active_jobs,
            ),
        )

    components.append(
        Announcer(info, interval_s=p2p.announce_interval_s, on_announcement=to_book, log=node.log)
    )
    if p2p.mdns:
        components.append(MdnsDiscovery(log=node.log))
    return components
