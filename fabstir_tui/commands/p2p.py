"""`fabstir-tui p2p info MULTIADDR` and `p2p find MODEL`: ask other nodes over libp2p."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
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


def resolve_model(model: str) -> str:
    """A model id from MODEL: 64 hex digits (0x optional) or a path to a GGUF file to hash."""
    from fabstir_tui.engine.inference.sha256 import sha256_file
    from fabstir_tui.engine.p2p.dht_lookup import normalize_model_id

    try:
        return normalize_model_id(model)
    except ValueError:
        pass
    path = Path(model).expanduser()
    if not path.is_file():
        raise ValueError(
            f"{model!r} is neither a model id (64 hex digits) nor a path to a GGUF file"
        )
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
    return sha256_file(path)


def _host_document(model_id: str, host: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "peer_id": host.peer_id,
        "addrs": list(host.addrs),
        "source": host.source,
    }
    info = host.info
    if info is None:
        return document
    offer = next((m for m in info.models if m.id.lower().removeprefix("0x") == model_id), None)
    document.update(
        name=offer.name if offer is not None else None,
        price_per_million=offer.price_per_million if offer is not None else None,
        price_token=offer.price_token if offer is not None else None,
        api_url=info.api_url,
        chain_address=info.chain_address,
        chain_id=info.chain_id,
        version=info.version,
        capacity={
            "max_jobs": info.capacity.max_jobs,
            "active_jobs": info.capacity.active_jobs,
            "queued_jobs": info.capacity.queued_jobs,
        },
        models_served=len(info.models),
    )
    return document


def _host_line(doc: dict[str, Any]) -> str:
    lines = [f"peer      {doc['peer_id']}  ({doc['source']})"]
    lines.extend(f"addr      {addr}" for addr in doc["addrs"])
    if "api_url" not in doc:
        lines.append("info      (unknown: no record and no answer)")
        return "\n".join(lines)
    price = doc["price_per_million"]
    token = doc["price_token"] or "(no token)"
    lines.append(f"model     {doc['name'] or '(not listed in its info)'}")
    if price is not None:
        lines.append(f"price     {price} per million tokens of {token}")
    cap = doc["capacity"]
    lines.append(f"capacity  {cap['active_jobs']}/{cap['max_jobs']} jobs active")
    lines.append(f"api       {doc['api_url'] or '(not announced)'}")
    return "\n".join(lines)


def p2p_find(
    model: str, bootstrap: list[str], as_json: bool, timeout_s: float = DEFAULT_TIMEOUT_S
) -> int:
    """Find the hosts of a model through the DHT; exit 1 for a bad MODEL, no bootstrap peer, a
    failed lookup or no host found, 2 for a malformed bootstrap address."""
    from fabstir_tui.client.discovery import find_hosts
    from fabstir_tui.client.p2p import P2PAddressError, P2PClientError

    try:
        model_id = resolve_model(model)
    except (ValueError, OSError) as exc:
        return fail(str(exc), EXIT_FAILED)
    if not bootstrap:
        return fail(
            "no bootstrap peer: pass --bootstrap MULTIADDR or set p2p.bootstrap in the config",
            EXIT_FAILED,
        )
    if not os.environ.get("FABSTIR_DEBUG"):
        import libp2p  # noqa: F401  (its import sets the "libp2p" logger to WARNING)

        logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # its retries are not our news
    try:
        hosts = asyncio.run(find_hosts(model_id, bootstrap, timeout_s))
    except P2PAddressError as exc:
        return fail(str(exc), EXIT_USAGE)
    except P2PClientError as exc:
        return fail(str(exc), EXIT_FAILED)
    documents = [_host_document(model_id, host) for host in hosts]
    if as_json:
        emit_json({"model_id": model_id, "hosts": documents})
    else:
        for doc in documents:
            click.echo(_host_line(doc))
            click.echo("")
    if not documents:
        return fail(f"no host provides model {model_id}", EXIT_FAILED)
    return EXIT_OK
