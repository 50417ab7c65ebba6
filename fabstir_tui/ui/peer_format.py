"""Peers as text: short ids and addresses, the header's P2P segment, table cells, the detail."""

from __future__ import annotations

import time

from fabstir_tui.engine.events import PeerView
from fabstir_tui.engine.p2p.service import P2PStatus
from fabstir_tui.ui.format import DASH, clock, short_hex

_NO_INFO = {"pending": "asking…", "unsupported": "no info", "failed": "info failed", "ok": ""}


def short_peer(peer_id: str) -> str:
    """The tail of a peer id: ids share their 12D3KooW prefix, the end tells them apart."""
    return peer_id if len(peer_id) <= 10 else f"…{peer_id[-9:]}"


def short_addr(addr: str) -> str:
    """`/ip4/1.2.3.4/tcp/4001/p2p/…` as `1.2.3.4:4001`; other shapes keep two parts."""
    parts = addr.strip("/").split("/")
    if len(parts) >= 4 and parts[0] in ("ip4", "dns", "dns4", "dns6") and parts[2] == "tcp":
        return f"{parts[1]}:{parts[3]}"
    if len(parts) >= 4 and parts[0] == "ip6" and parts[2] == "tcp":
        return f"[{parts[1]}]:{parts[3]}"
    return "/" + "/".join(parts[:2]) if parts and parts[0] else addr


def short_addrs(addrs: tuple[str, ...] | list[str]) -> str:
    """The first address short, and how many more there are."""
    if not addrs:
        return DASH
    more = f" +{len(addrs) - 1}" if len(addrs) > 1 else ""
    return short_addr(addrs[0]) + more


def p2p_summary(
    enabled: bool, status: P2PStatus | None, node_state: str, connected: int, inbound_seen: bool
) -> str:
    """The header's P2P segment: peers, what is known of our reachability, where we listen.
    Reachability is claimed only once a peer has dialled us; before that it is unknown."""
    if not enabled:
        return "P2P off"
    if status is None:
        return "P2P …" if node_state in ("starting", "stopped") else "P2P down"
    noun = "peer" if connected == 1 else "peers"
    reach = "reachable" if inbound_seen else "reach unknown"
    return f"P2P {connected} {noun} {reach} {short_addrs(status.listen_addrs)}"


def since(ts: float, now: float | None = None) -> str:
    """How long ago, in the largest unit that fits a few cells."""
    age = max(0.0, (time.time() if now is None else now) - ts)
    if age < 60:
        return f"{age:.0f}s ago"
    if age < 3600:
        return f"{age / 60:.0f}m ago"
    return clock(ts)


def ping_text(peer: PeerView) -> str:
    if not peer.connected:
        return "gone"
    if peer.ping_ms is None:
        return "✗" if peer.ping_error else "…"
    return f"{peer.ping_ms:.1f}ms" if peer.ping_ms < 100 else f"{peer.ping_ms:.0f}ms"


def models_text(peer: PeerView) -> str:
    if not peer.models:
        return _NO_INFO.get(peer.info_state, DASH) or "none"
    names = ", ".join(m.name for m in peer.models)
    return f"{len(peer.models)}: {names}"


def price_text(peer: PeerView) -> str:
    """The cheapest offer, per million tokens in the price token's base units."""
    cheapest = peer.lowest_price()
    return DASH if cheapest is None else f"{cheapest.price_per_million:,}/M"


def gpu_text(peer: PeerView) -> str:
    if not peer.gpu_name:
        return "none" if peer.info_state == "ok" else DASH
    name = peer.gpu_name.removeprefix("NVIDIA ").removeprefix("GeForce ")
    return f"{peer.gpu_count}x {name}" if peer.gpu_count > 1 else name


def row_cells(peer: PeerView, now: float | None = None) -> tuple[str, ...]:
    """One table row, in COLUMNS order."""
    return (
        short_peer(peer.peer_id),
        short_addrs(peer.addrs),
        {"inbound": "in", "outbound": "out"}.get(peer.direction, "?"),
        ping_text(peer),
        models_text(peer),
        price_text(peer),
        gpu_text(peer),
        peer.version or DASH,
        since(peer.last_seen, now),
    )


def matches(peer: PeerView, needle: str) -> bool:
    """The `/` filter: peer id, any address, any model name or id (case-insensitive)."""
    text = needle.strip().casefold()
    if not text:
        return True
    haystack = [peer.peer_id, *peer.addrs, *(m.name for m in peer.models)]
    haystack += [m.id for m in peer.models]
    return any(text in item.casefold() for item in haystack)


def detail_lines(peer: PeerView) -> list[str]:
    """Everything known about one peer, for the detail dialog."""
    state = "connected" if peer.connected else "disconnected"
    lines = [
        f"peer      {peer.peer_id}",
        f"state     {state}, {peer.direction}, first seen {clock(peer.first_seen)}, "
        f"last seen {since(peer.last_seen)}",
        f"ping      {ping_text(peer)}" + (f" ({peer.ping_error})" if peer.ping_error else ""),
        "addresses",
        *(f"  {a}" for a in peer.addrs or (DASH,)),
    ]
    info = {"ok": "answered", "pending": "not answered yet"}.get(peer.info_state, peer.info_state)
    if peer.info_error:
        info += f": {peer.info_error}"
    lines.append(f"info      {info} (asked {peer.info_queries}x)")
    if peer.version or peer.api_url or peer.chain_address:
        lines.append(f"version   {peer.version or DASH}   api {peer.api_url or DASH}")
        lines.append(f"chain     {peer.chain_address or DASH}")
    gpu = DASH
    if peer.gpu_name:
        vram = f", {peer.gpu_vram_mib:,} MiB" if peer.gpu_vram_mib is not None else ""
        gpu = f"{peer.gpu_count}x {peer.gpu_name}{vram}"
    lines.append(f"gpu       {gpu}")
    if peer.max_jobs is not None:
        lines.append(f"capacity  {peer.active_jobs or 0} of {peer.max_jobs} jobs running")
    if peer.announced_at is not None:
        lines.append(f"announced {since(peer.announced_at)}")
    lines.append(f"models    {len(peer.models)}")
    for m in peer.models:
        token = f" of {short_hex(m.price_token, 4)}" if m.price_token else ""
        lines.append(f"  {m.name}  {m.price_per_million:,}/M tokens{token}")
        lines.append(f"    id {m.id}")
    return lines
