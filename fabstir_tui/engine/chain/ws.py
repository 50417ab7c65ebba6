"""A lean JSON-RPC client over one WebSocket: eth_subscribe notices plus plain requests.

The follower takes newHeads through it rather than web3's WebSocketProvider: web3 formats
every notice into AttributeDicts and HexBytes (about 1 ms each, measured on anvil) and reports
a dead socket through its listener task; here notices stay raw JSON and a drop ends
wait_closed() with the reason. Keep requests on this socket rare: a request/answer exchange
followed by a notice met Nagle + delayed-ACK stalls of ~20 ms (measured on anvil).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fabstir_tui.engine.chain.rpc_pool import RpcCallError, rpc_error_fields, url_host

Notice = Callable[[str, Any], None]


class WsClosed(ConnectionError):
    """The WebSocket went away; pending requests fail with this and the owner reconnects."""


class WsRpc:
    """Requests matched to answers by id; eth_subscription notices go to `on_notice`."""

    def __init__(
        self,
        url: str,
        on_notice: Notice,
        *,
        open_timeout_s: float = 5.0,
        request_timeout_s: float = 10.0,
        ping_interval_s: float = 10.0,
    ) -> None:
        self.url = url
        self.on_notice = on_notice
        self.open_timeout_s = open_timeout_s
        self.request_timeout_s = request_timeout_s
        self.ping_interval_s = ping_interval_s
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.closed_reason = ""

    async def __aenter__(self) -> WsRpc:
        self._ws = await connect(
            self.url,
            open_timeout=self.open_timeout_s,
            ping_interval=self.ping_interval_s,
            ping_timeout=self.ping_interval_s,
            max_size=None,  # a busy block's logs can exceed the 1 MiB default
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the socket and stop reading; idempotent."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):  # not wait_for: it can swallow a cancel on 3.11
                    await self._ws.close()
            self._ws = None
        self._fail_pending(WsClosed(f"WebSocket to {url_host(self.url)} closed"))

    async def _read(self) -> None:
        """Dispatch answers to their requests and notices to the callback, until the drop."""
        assert self._ws is not None
        try:
            async for frame in self._ws:
                message = json.loads(frame)
                if not isinstance(message, dict):
                    continue  # a batch answer: this client sends no batches
                if message.get("method") == "eth_subscription":
                    params = message.get("params") or {}
                    self.on_notice(str(params.get("subscription")), params.get("result"))
                    continue
                request_id = message.get("id")
                future = (
                    self._pending.pop(request_id, None) if isinstance(request_id, int) else None
                )
                if future is not None and not future.done():
                    future.set_result(message)
            self.closed_reason = "the node closed the WebSocket"
        except ConnectionClosed as exc:
            self.closed_reason = f"connection lost ({exc})"
        finally:
            self._fail_pending(WsClosed(f"WebSocket to {url_host(self.url)}: {self.closed_reason}"))

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def wait_closed(self) -> str:
        """Return when the connection has dropped, with the reason."""
        if self._reader is not None:
            await asyncio.shield(self._reader)
        return self.closed_reason or "closed"

    async def request(self, method: str, params: list[Any]) -> Any:
        """One call over the socket; WsClosed when it drops, RpcCallError for a JSON-RPC error."""
        if self._ws is None or self._reader is None or self._reader.done():
            raise WsClosed(f"WebSocket to {url_host(self.url)} is not open")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        try:
            await self._ws.send(json.dumps(body))
            async with asyncio.timeout(self.request_timeout_s):
                reply = await future
        except ConnectionClosed as exc:
            raise WsClosed(f"WebSocket to {url_host(self.url)}: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)
        if "error" in reply:
            code, message = rpc_error_fields(reply["error"])
            raise RpcCallError(method, url_host(self.url), code, message)
        return reply.get("result")

    async def subscribe(self, *params: Any) -> str:
        """eth_subscribe; notices for the returned id then reach on_notice."""
        return str(await self.request("eth_subscribe", list(params)))
