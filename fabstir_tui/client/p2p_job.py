"""Run jobs on another node over `/fabstir/job/1.0.0`: `run_job` for one, `P2PClient` for many.

`P2PClient` keeps one host (and its connections) open in its own TrioBridge, so repeated
requests to a host skip the dial and the Noise handshake: what a bench measuring round trips
and a demo of many simulated clients need. Its identity is fresh and in memory unless a
`key_pair` is given (a fixed identity lets a host allowlist the client's peer id).

A job yields `TokenFrame`s then the `EndFrame`; a host's error frame raises `P2PRefused`
(its code and reason). Leaving the iteration early (`aclose()`, e.g. via
`contextlib.aclosing`) resets the stream, which cancels the generation on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import trio

from fabstir_tui.client.p2p import (
    P2PClientError,
    ask_info,
    open_stream,
    parse_peer_addr,
    refusal,
)
from fabstir_tui.engine.p2p.bridge import TrioBridge
from fabstir_tui.engine.p2p.frames import FrameError
from fabstir_tui.engine.p2p.host import HostConfig, running_host
from fabstir_tui.engine.p2p.messages import (
    JOB_PROTOCOL,
    EndFrame,
    ErrorFrame,
    InfoResponse,
    JobRequest,
    QueuedFrame,
    TokenFrame,
    parse_job_reply,
)
from fabstir_tui.engine.p2p.receipt_protocol import RECEIPT_PROTOCOL
from fabstir_tui.engine.p2p.streams import close_quietly, frame_reader, write_frame
from fabstir_tui.engine.proofs import ReceiptError, SignedReceipt, parse_receipt

_CLIENT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)
JobEvent = QueuedFrame | TokenFrame | EndFrame


def peer_id_for(key_pair: Any) -> str:
    """The base58 peer id a libp2p key pair dials as (for a host's job allowlist)."""
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(key_pair.public_key))


class P2PClient:
    """One client host kept open for several info and job requests (async context manager)."""

    def __init__(self, *, key_pair: Any = None, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._key_pair = key_pair
        self._bridge = TrioBridge()
        self._host: Any = None
        self._scope: trio.CancelScope | None = None

    @property
    def peer_id(self) -> str:
        """Our peer id while open."""
        if self._host is None:
            raise RuntimeError("the P2PClient is not open")
        return str(self._host.get_id())

    @property
    def bridge(self) -> TrioBridge:
        """The client's own trio bridge (to run custom protocol code beside the host)."""
        return self._bridge

    @property
    def host(self) -> Any:
        """The client's libp2p host while open (trio side only)."""
        return self._require_host()

    async def __aenter__(self) -> P2PClient:
        from libp2p.crypto.ed25519 import create_new_key_pair

        pair = self._key_pair if self._key_pair is not None else create_new_key_pair()
        await self._bridge.start()
        try:
            self._host, self._scope = await self._bridge.start_service(_serve_host, pair)
        except BaseException:
            await self._bridge.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        scope, self._scope = self._scope, None
        try:
            if scope is not None and self._bridge.running:
                await self._bridge.run(_stop_host, scope)
        finally:
            self._host = None
            await self._bridge.stop()

    def _require_host(self) -> Any:
        if self._host is None:
            raise RuntimeError("the P2PClient is not open: use `async with P2PClient() as c`")
        return self._host

    async def info(self, multiaddr: str, *, timeout_s: float | None = None) -> InfoResponse:
        """The peer's info answer on a new stream (over a kept connection after the first)."""
        host = self._require_host()
        info, peer_id = parse_peer_addr(multiaddr)
        limit = self.timeout_s if timeout_s is None else timeout_s
        response: InfoResponse = await self._bridge.run(ask_info, host, info, peer_id, limit)
        return response

    async def receipt(
        self, multiaddr: str, receipt_hash: str, *, timeout_s: float | None = None
    ) -> SignedReceipt:
        """The host's stored receipt with this hash over `/fabstir/receipt/1.0.0` (parsed, not
        verified: call `verify_receipt`); P2PRefused (e.g. ``not_found``) when it has none."""
        host = self._require_host()
        info, peer_id = parse_peer_addr(multiaddr)
        limit = self.timeout_s if timeout_s is None else timeout_s
        signed: SignedReceipt = await self._bridge.run(
            _receipt_on, host, info, peer_id, receipt_hash, limit
        )
        return signed

    async def job(
        self, multiaddr: str, request: JobRequest, *, timeout_s: float | None = None
    ) -> AsyncGenerator[JobEvent, None]:
        """Token batches then the end frame; `timeout_s` bounds each wait for the host."""
        host = self._require_host()
        info, peer_id = parse_peer_addr(multiaddr)
        limit = self.timeout_s if timeout_s is None else timeout_s
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        bridge = self._bridge

        def push(event: JobEvent) -> None:
            bridge.to_asyncio(queue.put_nowait, event)

        task = asyncio.ensure_future(
            bridge.run(_job_on, host, info, peer_id, request.to_frame(), push, limit)
        )
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    while not queue.empty():  # what arrived before the end of the run
                        yield queue.get_nowait()
                    await task  # raises the run's error; else the end frame was yielded
                    return
                event = getter.result()
                yield event
                if isinstance(event, EndFrame):
                    await task
                    return
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


async def run_job(
    multiaddr: str, request: JobRequest, *, key_pair: Any = None, timeout_s: float = 30.0
) -> AsyncGenerator[JobEvent, None]:
    """One job on a throwaway client host: TokenFrames then the EndFrame, or P2PClientError."""
    async with P2PClient(key_pair=key_pair, timeout_s=timeout_s) as client:
        stream = client.job(multiaddr, request)
        async with contextlib.aclosing(stream):
            async for event in stream:
                yield event


# --- trio side -------------------------------------------------------------------------------


async def _serve_host(key_pair: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Keep one listening client host until its scope is cancelled."""
    config = HostConfig(Path("/nonexistent/unused-identity"), _CLIENT_LISTEN)
    with trio.CancelScope() as scope:
        async with running_host(config, key_pair) as host:
            task_status.started((host, scope))
            await trio.sleep_forever()


async def _stop_host(scope: trio.CancelScope) -> None:
    scope.cancel()


async def _job_on(
    host: Any,
    info: Any,
    peer_id: str,
    frame: dict[str, Any],
    push: Callable[[JobEvent], None],
    timeout_s: float,
) -> None:
    """Send the request and push each reply to asyncio; reset the stream when abandoned."""
    try:
        with trio.fail_after(timeout_s):
            stream = await open_stream(host, info, peer_id, JOB_PROTOCOL)
    except trio.TooSlowError:
        raise P2PClientError(
            f"peer {peer_id} did not open a job stream in {timeout_s:g} s"
        ) from None
    finished = False
    try:
        await write_frame(stream, frame, timeout_s=timeout_s)
        reader = frame_reader(stream, read_timeout_s=timeout_s)
        while True:
            try:
                raw = await reader.read_frame()
            except trio.TooSlowError:
                raise P2PClientError(f"peer {peer_id} went silent for {timeout_s:g} s") from None
            except FrameError as exc:
                raise P2PClientError(f"peer {peer_id} sent an unreadable frame: {exc}") from None
            if raw is None:
                raise P2PClientError(f"peer {peer_id} closed the job stream before its end")
            try:
                reply = parse_job_reply(raw)
            except FrameError as exc:
                raise P2PClientError(f"peer {peer_id} sent an invalid job reply: {exc}") from None
            if isinstance(reply, ErrorFrame):
                finished = True
                raise refusal(peer_id, raw)
            push(reply)
            if isinstance(reply, EndFrame):
                finished = True
                return
    except P2PClientError:
        raise
    except trio.TooSlowError:
        raise P2PClientError(
            f"peer {peer_id} did not take the request in {timeout_s:g} s"
        ) from None
    except Exception as exc:  # a reset or a dropped connection
        raise P2PClientError(f"the job stream to peer {peer_id} failed: {exc}") from None
    finally:
        with trio.CancelScope(shield=True):
            if finished:
                await close_quietly(stream)
            else:
                with contextlib.suppress(Exception), trio.move_on_after(2):
                    await stream.reset()


async def _receipt_on(
    host: Any, info: Any, peer_id: str, receipt_hash: str, timeout_s: float
) -> SignedReceipt:
    """Ask for one receipt on a new stream; the parsed receipt or a P2PClientError."""
    try:
        with trio.fail_after(timeout_s):
            stream = await open_stream(host, info, peer_id, RECEIPT_PROTOCOL)
    except trio.TooSlowError:
        raise P2PClientError(
            f"peer {peer_id} did not open a receipt stream in {timeout_s:g} s"
        ) from None
    try:
        request = {"v": 1, "t": "receipt_request", "hash": receipt_hash}
        await write_frame(stream, request, timeout_s=timeout_s)
        raw = await frame_reader(stream, read_timeout_s=timeout_s).read_frame()
    except trio.TooSlowError:
        raise P2PClientError(f"peer {peer_id} did not answer in {timeout_s:g} s") from None
    except FrameError as exc:
        raise P2PClientError(f"peer {peer_id} sent an unreadable frame: {exc}") from None
    except Exception as exc:  # a reset or a dropped connection
        raise P2PClientError(f"the receipt stream to peer {peer_id} failed: {exc}") from None
    finally:
        with trio.CancelScope(shield=True):
            await close_quietly(stream)
    if not isinstance(raw, dict):
        raise P2PClientError(f"peer {peer_id} closed the receipt stream without answering")
    if raw.get("t") == "error":
        raise refusal(peer_id, raw)
    if raw.get("v") != 1 or raw.get("t") != "receipt":
        raise P2PClientError(f"peer {peer_id} sent a {raw.get('t')!r} frame, not a receipt")
    body = raw.get("receipt")
    if not isinstance(body, dict):
        raise P2PClientError(f"peer {peer_id} sent a receipt frame without a receipt object")
    try:
        return parse_receipt(body)
    except ReceiptError as exc:
        raise P2PClientError(f"peer {peer_id} sent an invalid receipt: {exc}") from None
