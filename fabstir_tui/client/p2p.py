"""Ask another node over libp2p: `query_info` on `/fabstir/info/1.0.0`, and the pieces the
job client (p2p_job.py) shares: address parsing, stream opening, typed refusals.

Each call runs its own TrioBridge (thread mode when a guest run already owns this loop)
and a throwaway host with a fresh in-memory ed25519 identity, so nothing is written to disk
and the queried node learns nothing that links two queries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from fabstir_tui.engine.p2p.bridge import TrioBridge
from fabstir_tui.engine.p2p.frames import FrameError
from fabstir_tui.engine.p2p.host import HostConfig, running_host
from fabstir_tui.engine.p2p.messages import (
    INFO_PROTOCOL,
    ErrorCode,
    InfoRequest,
    InfoResponse,
    parse_error,
    parse_info,
)
from fabstir_tui.engine.p2p.streams import close_quietly, frame_reader, write_frame

_CLIENT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)


class P2PClientError(Exception):
    """A peer could not be queried; the message says what failed and why."""


class P2PAddressError(P2PClientError, ValueError):
    """The multiaddr is malformed or lacks the /p2p/<peer id> part."""


class P2PRefused(P2PClientError):
    """The peer answered with an error frame: `code` (an ErrorCode) and its `reason`."""

    def __init__(self, peer_id: str, code: str, reason: str) -> None:
        super().__init__(f"peer {peer_id} refused: {code}: {reason}")
        self.code = code
        self.reason = reason


def parse_peer_addr(addr: str) -> tuple[Any, str]:
    """(PeerInfo, peer id) from a full multiaddr, or P2PAddressError saying what is wrong."""
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    if not addr.startswith("/"):
        raise P2PAddressError(
            f"{addr!r} is not a multiaddr (like /ip4/1.2.3.4/tcp/4001/p2p/12D3...)"
        )
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:  # multiaddr raises several unrelated types
        detail = str(exc) or type(exc).__name__
        raise P2PAddressError(
            f"{addr!r} is not a dialable multiaddr with /p2p/<peer id>: {detail}"
        ) from None
    return info, str(info.peer_id)


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text = f"{text}: {str(cause).strip()}" if text else str(cause).strip()
    return text or type(exc).__name__


async def query_info(multiaddr: str, *, timeout_s: float = 30) -> InfoResponse:
    """The peer's info answer, or P2PClientError (P2PAddressError for a malformed address)."""
    info, peer_id = parse_peer_addr(multiaddr)
    bridge = TrioBridge()
    await bridge.start()
    try:
        response: InfoResponse = await bridge.run(_query_info, info, peer_id, timeout_s)
        return response
    finally:
        await bridge.stop()


async def _query_info(info: Any, peer_id: str, timeout_s: float) -> InfoResponse:
    """Trio side: throwaway host, dial, one request, one reply."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    config = HostConfig(Path("/nonexistent/unused-identity"), _CLIENT_LISTEN)
    try:
        async with running_host(config, create_new_key_pair()) as host:
            return await ask_info(host, info, peer_id, timeout_s)
    except BaseExceptionGroup as group:  # the host's nursery wraps what its block raised
        ours, _rest = group.split(P2PClientError)
        if ours is None:
            raise
        raise _first_leaf(ours) from None


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first plain exception inside a (nested) exception group."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


async def open_stream(host: Any, info: Any, peer_id: str, protocol: str) -> Any:
    """Trio side: connect (a no-op when already connected) and open `protocol`, or
    P2PClientError saying which of the two failed."""
    from libp2p.custom_types import TProtocol

    try:
        await host.connect(info)
    except Exception as exc:  # dial errors come in many types
        addrs = ", ".join(str(a) for a in info.addrs)
        raise P2PClientError(f"peer {peer_id} is unreachable at {addrs}: {_why(exc)}") from None
    try:
        return await host.new_stream(info.peer_id, [TProtocol(protocol)])
    except Exception as exc:
        raise P2PClientError(
            f"peer {peer_id} would not open {protocol} (not supported?): {_why(exc)}"
        ) from None


def refusal(peer_id: str, frame: dict[str, Any]) -> P2PRefused:
    """The typed error for a host's error frame (a malformed one still says so)."""
    try:
        err = parse_error(frame)
    except FrameError as exc:
        return P2PRefused(peer_id, ErrorCode.MALFORMED, f"unreadable error frame: {exc}")
    return P2PRefused(peer_id, err.code, err.message)


async def _ask(host: Any, info: Any, peer_id: str) -> InfoResponse:
    stream = await open_stream(host, info, peer_id, INFO_PROTOCOL)
    try:
        try:
            await write_frame(stream, InfoRequest().to_frame())
            frame = await frame_reader(stream).read_frame()
        except FrameError as exc:
            raise P2PClientError(f"peer {peer_id} sent an unreadable reply: {exc}") from None
        except Exception as exc:  # reset / closed connection
            raise P2PClientError(f"the stream to peer {peer_id} failed: {_why(exc)}") from None
        if frame is None:
            raise P2PClientError(f"peer {peer_id} closed the stream without answering")
        if frame.get("t") == "error":
            raise refusal(peer_id, frame)
        try:
            return parse_info(frame)
        except FrameError as exc:
            raise P2PClientError(f"peer {peer_id} sent an invalid info answer: {exc}") from None
    finally:
        with trio.CancelScope(shield=True):
            await close_quietly(stream)


async def ask_info(host: Any, info: Any, peer_id: str, timeout_s: float) -> InfoResponse:
    """Trio side: one info request from an already running host, bounded by `timeout_s`."""
    try:
        with trio.fail_after(timeout_s):
            return await _ask(host, info, peer_id)
    except trio.TooSlowError:
        raise P2PClientError(f"peer {peer_id} did not answer within {timeout_s:g} s") from None
