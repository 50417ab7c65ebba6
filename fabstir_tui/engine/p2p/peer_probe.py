"""Trio-side probes the peer book runs against a connected peer: info query, ping, dial, hang up.

Each probe returns an outcome or raises `ProbeError` with a message fit for the operator; a
peer that does not speak a protocol raises `ProtocolUnsupported`, so the book can stop asking.
libp2p is imported inside the functions (it costs seconds to import).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import trio

from fabstir_tui.engine.p2p.frames import FrameError
from fabstir_tui.engine.p2p.messages import (
    INFO_PROTOCOL,
    InfoRequest,
    InfoResponse,
    parse_error,
    parse_info,
)
from fabstir_tui.engine.p2p.streams import close_quietly, frame_reader, write_frame

PING_PROTOCOL = "/ipfs/ping/1.0.0"
PING_BYTES = 32


class ProbeError(Exception):
    """A probe of a peer failed; the message says what and why."""


class ProtocolUnsupported(ProbeError):
    """The peer refused the protocol during negotiation: it does not speak it."""


def describe(exc: BaseException) -> str:
    """An exception and its causes as one short line (libp2p nests the useful part)."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 3:
        text = str(seen).strip()
        if text and text not in parts:
            parts.append(text)
        seen = seen.__cause__
    return ": ".join(parts) or type(exc).__name__


def _unsupported(exc: BaseException) -> bool:
    """The peer answered "na" to the protocol. libp2p 0.8.1 re-raises the typed
    ProtocolNotSupportedError as a plain MultiselectClientError whose text alone says so."""
    from libp2p.protocol_muxer.exceptions import ProtocolNotSupportedError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProtocolNotSupportedError) or "not supported" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def open_stream(
    host: Any, peer_id: Any, protocol: str, *, connected_only: bool = False
) -> Any:
    """A new stream; ProtocolUnsupported when the peer says no. `connected_only`: never dial
    (the library's new_stream dials a peer it is not connected to, so a probe that raced the
    operator's disconnect would connect again)."""
    from libp2p.custom_types import TProtocol

    if connected_only and not host.get_network().get_connections(peer_id):
        raise ProbeError("not connected any more (a probe of a known peer never dials)")
    try:
        return await host.new_stream(peer_id, [TProtocol(protocol)])
    except trio.TooSlowError:
        raise
    except Exception as exc:  # StreamFailure and friends, many types
        if _unsupported(exc):
            raise ProtocolUnsupported(f"does not speak {protocol}") from None
        raise ProbeError(f"could not open {protocol}: {describe(exc)}") from None


async def query_peer_info(
    host: Any, peer_id: Any, timeout_s: float, *, connected_only: bool = False
) -> InfoResponse:
    """Ask a peer `/fabstir/info/1.0.0` once, within `timeout_s`."""
    try:
        with trio.fail_after(timeout_s):
            stream = await open_stream(host, peer_id, INFO_PROTOCOL, connected_only=connected_only)
            try:
                await write_frame(stream, InfoRequest().to_frame())
                frame = await frame_reader(stream).read_frame()
            finally:
                with trio.CancelScope(shield=True):
                    await close_quietly(stream, timeout_s=1.0)
    except trio.TooSlowError:
        raise ProbeError(f"no info answer within {timeout_s:g} s") from None
    except ProbeError:
        raise
    except FrameError as exc:
        raise ProbeError(f"unreadable info answer: {exc}") from None
    except Exception as exc:  # reset, closed connection
        raise ProbeError(f"info stream failed: {describe(exc)}") from None
    if frame is None:
        raise ProbeError("closed the info stream without answering")
    try:
        if frame.get("t") == "error":
            err = parse_error(frame)
            raise ProbeError(f"refused info: {err.code}: {err.message}")
        return parse_info(frame)
    except FrameError as exc:
        raise ProbeError(f"invalid info answer: {exc}") from None


async def ping_peer(host: Any, peer_id: Any, timeout_s: float) -> float:
    """One `/ipfs/ping/1.0.0` round trip in milliseconds over the connection there is (never a
    dial; sub-millisecond resolution: the library's own ping rounds to whole ms, which reads 0
    on loopback)."""
    from libp2p.io.utils import read_exactly

    payload = secrets.token_bytes(PING_BYTES)
    try:
        with trio.fail_after(timeout_s):
            stream = await open_stream(host, peer_id, PING_PROTOCOL, connected_only=True)
            try:
                start = time.perf_counter()
                await stream.write(payload)
                echo = await read_exactly(stream, PING_BYTES)
                rtt_ms = (time.perf_counter() - start) * 1000.0
            finally:
                with trio.CancelScope(shield=True):
                    await close_quietly(stream, timeout_s=1.0)
    except trio.TooSlowError:
        raise ProbeError(f"no ping answer within {timeout_s:g} s") from None
    except ProbeError:
        raise
    except Exception as exc:
        raise ProbeError(f"ping failed: {describe(exc)}") from None
    if echo != payload:
        raise ProbeError("ping answer did not echo the payload")
    return rtt_ms


async def dial(host: Any, addr: str, timeout_s: float) -> str:
    """Connect to a full multiaddr (with /p2p/<id>); returns the peer id or raises ProbeError."""
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    try:
        with trio.fail_after(timeout_s):
            await host.connect(info)
    except trio.TooSlowError:
        raise ProbeError(f"no connection within {timeout_s:g} s") from None
    except Exception as exc:  # dial errors come in many types, sometimes grouped
        raise ProbeError(describe(exc)) from None
    return str(info.peer_id)


async def hang_up(host: Any, peer_id: str) -> None:
    """Close every connection to `peer_id`; ProbeError when it is not a peer id or not connected.
    Nothing dials it again on its own: host.py turns libp2p's auto-connector off."""
    from libp2p.peer.id import ID

    try:
        pid = ID.from_base58(peer_id)
    except Exception:
        raise ProbeError(f"{peer_id!r} is not a peer id (like 12D3KooW...)") from None
    if pid not in host.get_connected_peers():
        raise ProbeError(f"not connected to {peer_id}")
    try:
        await host.disconnect(pid)
    except Exception as exc:
        raise ProbeError(f"could not disconnect: {describe(exc)}") from None
