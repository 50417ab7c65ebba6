"""Find the hosts that serve a model: `find_hosts` joins the DHT as a client through bootstrap
peers, looks up the model's provider records and reads each host's signed info record.

Each call runs its own TrioBridge and a throwaway host with a fresh in-memory ed25519 identity;
the DHT runs in CLIENT mode, so the client never answers DHT queries nor lands in anyone's
routing table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from fabstir_tui.client.p2p import P2PAddressError, P2PClientError, parse_peer_addr
from fabstir_tui.engine.p2p.bridge import TrioBridge
from fabstir_tui.engine.p2p.dht_lookup import HostFound, lookup_model, normalize_model_id
from fabstir_tui.engine.p2p.discovery import add_peer_to_table, build_dht
from fabstir_tui.engine.p2p.host import HostConfig, running_host

__all__ = ["HostFound", "P2PAddressError", "P2PClientError", "find_hosts"]

_CLIENT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)
BOOTSTRAP_DIAL_TIMEOUT_S = 10.0


async def find_hosts(
    model_id: str, bootstrap: Sequence[str], timeout_s: float = 30.0
) -> list[HostFound]:
    """The hosts providing `model_id`, once each, with their info; [] when none does.

    Raises ValueError for a malformed model id, P2PAddressError for a malformed bootstrap
    address, and P2PClientError when no bootstrap peer is given, none is reachable or the
    lookup does not finish within `timeout_s`."""
    hex_id = normalize_model_id(model_id)
    if not bootstrap:
        raise P2PClientError("no bootstrap peer to join the DHT through")
    peers = [parse_peer_addr(addr)[0] for addr in bootstrap]
    bridge = TrioBridge()
    await bridge.start()
    try:
        found: list[HostFound] = await bridge.run(_find, hex_id, peers, timeout_s)
        return found
    finally:
        await bridge.stop()


async def _find(model_id: str, peers: list[Any], timeout_s: float) -> list[HostFound]:
    """Trio side: throwaway host, dial the bootstrap peers, one provider lookup."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    config = HostConfig(Path("/nonexistent/unused-identity"), _CLIENT_LISTEN)
    try:
        async with running_host(config, create_new_key_pair()) as host:
            try:
                with trio.fail_after(timeout_s):
                    dht = build_dht(host, server=False)
                    await _join(host, dht, peers)
                    return await lookup_model(dht, host, model_id)
            except trio.TooSlowError:
                raise P2PClientError(
                    f"the lookup of model {model_id[:12]}... did not finish within {timeout_s:g} s"
                ) from None
    except BaseExceptionGroup as group:  # the host's nursery wraps what its block raised
        ours, _rest = group.split(P2PClientError)
        if ours is None:
            raise
        first: BaseException = ours
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def _join(host: Any, dht: Any, peers: list[Any]) -> None:
    """Dial every bootstrap peer at once; those that answer seed the routing table."""
    failures: list[str] = []

    async def dial(info: Any) -> None:
        try:
            with trio.fail_after(BOOTSTRAP_DIAL_TIMEOUT_S):
                await host.connect(info)
            await add_peer_to_table(dht, info.peer_id)
        except Exception as exc:  # one bootstrap peer down is not fatal
            failures.append(f"{info.peer_id}: {str(exc) or type(exc).__name__}")

    async with trio.open_nursery() as nursery:
        for info in peers:
            nursery.start_soon(dial, info)
    if dht.get_routing_table_size() == 0:
        raise P2PClientError("no bootstrap peer could be reached: " + "; ".join(failures))
