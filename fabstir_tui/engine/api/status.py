"""`GET /v1/node/status`: the node's snapshot as one JSON document, for `fabstir-tui status`
and dashboards. Public, so it carries no secret: no keystore path, no wallet detail (it names
the keystore), RPC endpoints as scheme://host:port only, big amounts as decimal strings."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fabstir_tui.engine.api.metrics import Handler, model_label
from fabstir_tui.engine.chain.rpc_pool import url_host
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.p2p.service import package_version

if TYPE_CHECKING:
    from fabstir_tui.config import Config
    from fabstir_tui.engine.chain.events import ChainStatus
    from fabstir_tui.engine.events import GpuSnapshot
    from fabstir_tui.engine.node import Node

STATUS_PATH = "/v1/node/status"


_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)


def safe_url(url: str) -> str:
    """Scheme, host and port: provider URLs carry API keys in the path, query or user part."""
    return url_host(url) if url else ""


def redact(text: str, config: Config) -> str:
    """Replace any configured RPC URL quoted in a message with its safe form, and drop the
    user part (user:password@) of any other URL in it."""
    urls = [*config.chain.rpc_urls, config.chain.ws_url]
    for url in sorted((u for u in urls if u), key=len, reverse=True):
        text = text.replace(url, safe_url(url))
    return _USERINFO.sub(r"\1", text)


def _gpu(gpu: GpuSnapshot | None) -> dict[str, Any] | None:
    if gpu is None:
        return None
    return {
        "available": gpu.available,
        "backend": gpu.backend,
        "reason": gpu.reason,
        "driver_version": gpu.driver_version,
        "cuda_version": gpu.cuda_version,
        "devices": [
            {
                "index": d.index,
                "name": d.name,
                "uuid": d.uuid,
                "utilisation_pct": d.utilisation_pct,
                "memory_used_bytes": d.memory_used_bytes,
                "memory_total_bytes": d.memory_total_bytes,
                "temperature_c": d.temperature_c,
                "power_w": d.power_w,
                "power_limit_w": d.power_limit_w,
            }
            for d in gpu.devices
        ],
    }


def _chain(status: ChainStatus | None, config: Config) -> dict[str, Any] | None:
    if status is None:
        return None
    return {
        "enabled": status.enabled,
        "chain_id": status.chain_id,
        "url_host": safe_url(status.url),
        "block": status.block,
        "applied_block": status.applied_block,
        "synced": status.synced,
        "connection": status.connection,
        "address": status.address,
        "wallet": status.wallet,
        "registered": status.registered,
        "stake_wei": str(status.stake_wei),
        "eth_balance_wei": None if status.eth_balance_wei is None else str(status.eth_balance_wei),
        "low_gas": status.low_gas,
        "read_only": status.read_only,
        "payment_token": status.payment_token,
        "balances": [
            {
                "token": b.token,
                "symbol": b.symbol,
                "decimals": b.decimals,
                "earned_total": str(b.earned_total),
                "withdrawable": str(b.withdrawable),
                "held_in_escrow": str(b.held_in_escrow),
                "jobs_awaiting_release": b.jobs_awaiting_release,
            }
            for b in status.balances
        ],
        "error": redact(status.error, config),
    }


def _jobs(node: Node) -> dict[str, Any]:
    snap = node.jobs_snapshot()
    every = (*snap.market, *snap.queue, *snap.done)
    active = sum(1 for v in every if v.key.kind is JobKind.SESSION and v.state is JobState.ACTIVE)
    return {
        "pipeline_running": node.jobs is not None,
        "mode": snap.mode,
        "market": len(snap.market),
        "queue": len(snap.queue),
        "done": len(snap.done),
        "lost": snap.lost_count,
        "sessions_active": active,
        "by_state": dict(sorted(Counter(v.state.value for v in every).items())),
    }


def _api(node: Node) -> dict[str, Any]:
    """The API's address and traffic (this status request counts as one open request)."""
    api = node.api_status()
    block: dict[str, Any] = {"enabled": node.config.api.enabled, "running": api is not None}
    if api is None:
        return block
    return {
        **block,
        "url": api.url,
        "open_requests": api.open_requests,
        "open_websockets": api.open_websockets,
        "requests_total": api.requests_total,
        "errors_total": api.errors_total,
        "per_minute": api.per_minute,
        "refusals": dict(api.refusals),
    }


def status_document(node: Node) -> dict[str, Any]:
    """What `fabstir-tui status --json` prints: a stable, secret-free picture of the node."""
    snap = node.snapshot()
    peers = node.peers()
    p2p = node.p2p_status()
    loaded = []
    for m in snap.loaded:
        slots = node.models.slot_queue(m.path)
        loaded.append(
            {
                "name": model_label(m.path),
                "n_ctx": m.n_ctx,
                "n_threads": m.n_threads,
                "gpu_offload": m.gpu_offload,
                "chat_format": m.chat_format,
                "load_s": m.load_s,
                "slots": {"capacity": slots.capacity, "busy": slots.busy, "waiting": slots.waiting},
            }
        )
    host = snap.host
    return {
        "name": snap.name,
        "state": snap.state,
        "version": package_version(),
        "read_only": snap.read_only,
        "models": {
            "loaded": loaded,
            "available": sum(1 for m in snap.models if m.error is None),
        },
        "gpu": _gpu(snap.gpu),
        "host": None
        if host is None
        else {
            "cpu_pct": host.cpu_pct,
            "cpu_count": host.cpu_count,
            "ram_used_bytes": host.ram_used_bytes,
            "ram_total_bytes": host.ram_total_bytes,
        },
        "chain": _chain(snap.chain, node.config),
        "peers": {"connected": sum(1 for p in peers if p.connected), "known": len(peers)},
        "p2p": None
        if p2p is None
        else {"peer_id": p2p.peer_id, "listen_addrs": list(p2p.listen_addrs)},
        "jobs": _jobs(node),
        "api": _api(node),
    }


def status_handler(node: Node) -> Handler:
    """The `/v1/node/status` handler over one node."""

    async def handle(_request: web.Request) -> web.StreamResponse:
        return web.json_response(status_document(node))

    return handle
