"""LAN discovery by multicast DNS (DESIGN §5, optional): announce ourselves, dial who answers.

libp2p's mDNS runs on zeroconf's threads and reports peers through a process-wide singleton
(`peerDiscovery`), so the handler only hands each find to trio through the run's token and an
unbounded channel (a bounded one can raise WouldBlock there, FIELD-NOTES); a trio task dials.
The service name is private to fabstir (`_p2p-fabstir._udp.local.`), so other libp2p apps on
the LAN are not dialed. Zeroconf's blocking calls (bind, register, close) run on a thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from libp2p.abc import IHost
    from libp2p.peer.peerinfo import PeerInfo

    from fabstir_tui.engine.events import LogLevel
    from fabstir_tui.engine.p2p.bridge import TrioBridge

_log = logging.getLogger(__name__)

SERVICE_TAG = "fabstir"
DIAL_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def _tcp_port(addrs: list[str]) -> int:
    for addr in addrs:
        parts = addr.split("/")
        if "tcp" in parts:
            return int(parts[parts.index("tcp") + 1])
    return 0


class MdnsDiscovery:
    """Node component: mDNS announce + browse; every new peer found is dialed once."""

    name = "mdns"

    def __init__(
        self,
        *,
        service_tag: str = SERVICE_TAG,
        dial_timeout_s: float = DIAL_TIMEOUT_S,
        log: Callable[[LogLevel, str, str], None] | None = None,
    ) -> None:
        self.service_tag = service_tag
        self.dial_timeout_s = dial_timeout_s
        self._log_fn = log
        self._bridge: TrioBridge | None = None
        self.found: set[str] = set()
        self.dialed: set[str] = set()

    async def attach(self, host: IHost, bridge: TrioBridge, nursery: trio.Nursery) -> None:
        """Start zeroconf (on a thread) and the dial task; a failure to start is a log line."""
        self._bridge = bridge
        nursery.start_soon(self._run, host)

    def _say(self, level: LogLevel, message: str) -> None:
        if self._log_fn is not None and self._bridge is not None:
            try:
                self._bridge.to_asyncio(self._log_fn, level, "mdns", message)
                return
            except Exception:  # the loop is gone while stopping
                pass
        _log.info("%s", message)

    async def _run(self, host: IHost) -> None:
        from libp2p.discovery.events.peerDiscovery import peerDiscovery
        from libp2p.discovery.mdns.mdns import create_mdns_discovery

        send, receive = trio.open_memory_channel["PeerInfo"](math.inf)
        token = trio.lowlevel.current_trio_token()
        me = host.get_id()

        def deliver(info: PeerInfo) -> None:  # in trio: raising here would end the whole run
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(info)

        def on_found(info: PeerInfo) -> None:  # zeroconf's thread
            if info.peer_id != me:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(deliver, info)

        addrs = [str(a) for a in host.get_addrs()]
        make = functools.partial(
            create_mdns_discovery,
            host.get_network(),
            port=_tcp_port(addrs),
            listen_addrs=addrs,
            private_network_fingerprint=self.service_tag,
            host=host,
        )
        peerDiscovery.register_peer_discovered_handler(on_found)
        mdns: Any = None
        try:
            try:
                mdns = await trio.to_thread.run_sync(make)
                await trio.to_thread.run_sync(mdns.broadcaster.register)
            except Exception as exc:  # no multicast here: the node runs on without mDNS
                self._say("warning", f"mDNS did not start: {exc}")
                return
            self._say("info", "mDNS discovery on")
            await self._dial_loop(host, receive)
        finally:
            peerDiscovery.unregister_peer_discovered_handler(on_found)
            if mdns is not None:
                with trio.move_on_after(STOP_TIMEOUT_S) as scope:
                    scope.shield = True
                    await trio.to_thread.run_sync(_stop_quietly, mdns)

    async def _dial_loop(self, host: IHost, receive: trio.MemoryReceiveChannel[PeerInfo]) -> None:
        async with trio.open_nursery() as nursery:
            async for info in receive:
                peer = str(info.peer_id)
                if peer in self.found:
                    continue
                self.found.add(peer)
                nursery.start_soon(self._dial, host, info)

    async def _dial(self, host: IHost, info: PeerInfo) -> None:
        peer = str(info.peer_id)
        if info.peer_id in host.get_connected_peers():
            self.dialed.add(peer)
            return
        try:
            with trio.fail_after(self.dial_timeout_s):
                await host.connect(info)
        except Exception as exc:  # a LAN peer gone again is not an error of ours
            self.found.discard(peer)  # a later announcement may try again
            _log.debug("mDNS peer %s did not answer: %s", peer, exc)
            return
        self.dialed.add(peer)
        self._say("info", f"connected to LAN peer {peer}")


def _stop_quietly(mdns: Any) -> None:
    try:
        mdns.stop()
    except Exception as exc:  # zeroconf may already be closed
        _log.debug("mDNS stop: %s", exc)
