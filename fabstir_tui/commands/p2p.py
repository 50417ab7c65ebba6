"""`fabstir-tui p2p info MULTIADDR`: ask another node what it serves, over libp2p."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from fabstir_tui.commands.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, emit_json, fail

DEFAULT_TIMEOUT_S = 30.0


def _document(addr: str, info: Any) -> dict[str, Any]:
    body: dict[str, Any] = info.to_frame()
    body.pop("v", None)
    body.pop("t", None)
    return {"peer": addr, **body}


def _human(addr: str, info: Any) -> str:
    lines = [f"peer      {addr}", f"version   {info.version}"]
    lines.append(f"api       {info.api_url or '(not announced)'}")
    lines.append(
        f"chain     {info.chain_address or '(no address)'}"
        + (f" on chain {info.chain_id}" if info.chain_id is not None else "")
    )
    gpu = info.gpu
    if gpu is None:
        lines.append("gpu       (none reported)")
    else:
        lines.append(f"gpu       {gpu.count} x {gpu.name}, {gpu.vram_mib} MiB")
    cap = info.capacity
    lines.append(
        f"capacity  {cap.active_jobs}/{cap.max_jobs} jobs active, {cap.queued_jobs} queued"
    )
    if not info.models:
        lines.append("models    (none)")
    for model in info.models:
        token = model.price_token or "(no token)"
        lines.append(f"model     {model.name}  {model.id}")
        lines.append(f"          {model.price_per_million} per million tokens of {token}")
    return "\n".join(lines)


def p2p_info(addr: str, as_json: bool, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """Query one peer's info protocol; exit 1 when it cannot be queried, 2 for a bad address."""
    from fabstir_tui.client.p2p import P2PAddressError, P2PClientError, query_info

    try:
        info = asyncio.run(query_info(addr, timeout_s=timeout_s))
    except P2PAddressError as exc:
        return fail(str(exc), EXIT_USAGE)
    except P2PClientError as exc:
        return fail(str(exc), EXIT_FAILED)
    if as_json:
        emit_json(_document(addr, info))
    else:
        click.echo(_human(addr, info))
    return EXIT_OK
