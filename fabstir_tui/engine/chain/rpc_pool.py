"""JSON-RPC over several HTTP endpoints: retries with back-off, failover and readable errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.types import RPCEndpoint

log = logging.getLogger(__name__)

# Words providers use when a request is refused for load, not for what it asked.
_RATE_LIMIT_WORDS = (
    "rate limit",
    "rate-limit",
    "too many requests",
    "compute units",
    "capacity",
    "throughput",
    "exceeded the quota",
)
# Words providers use when an eth_getLogs range or result set is over their cap.
_RANGE_WORDS = (
    "range",
    "query returned more than",
    "too many results",
    "response size",
    "results exceed",
    "limit exceeded",
    "too many logs",
    "max results",
)
SwitchHook = Callable[[str, str, str], None]


class RpcCallError(RuntimeError):
    """The node answered with a JSON-RPC error: the request itself is wrong or refused."""

    def __init__(self, method: str, url: str, code: int, message: str) -> None:
        super().__init__(f"{method} at {url} failed: {message} (JSON-RPC error {code})")
        self.method = method
        self.url = url
        self.code = code
        self.message = message


class RangeTooLarge(RpcCallError):
    """eth_getLogs was refused for its block range or result size: ask for fewer blocks."""


class RpcUnavailable(RuntimeError):
    """No endpoint answered after every retry; the message lists each URL and why."""


def url_host(url: str) -> str:
    """Scheme, host and port only: provider URLs carry API keys in the path, the query or the
    user part (https://user:secret@host)."""
    scheme, sep, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}{sep}{netloc}" if sep else netloc


class RpcPool:
    """AsyncWeb3 over one AsyncHTTPProvider per URL; sticks to the endpoint that works.

    `on_switch(new_url, old_url, why)` hears every failover (full URLs: show url_host() of them,
    provider URLs often hold API keys); after `failback_s` the first URL is tried again.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
        failback_s: float = 60.0,
        on_switch: SwitchHook | None = None,
    ) -> None:
        if not urls:
            raise ValueError("no RPC URL: set chain.rpc_urls (one or more http(s):// URLs)")
        self.urls = list(urls)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.failback_s = failback_s
        self.on_switch = on_switch
        self._w3s = [self._make_w3(url) for url in self.urls]
        self._index = 0
        self._switched_at = 0.0
        self.calls = 0
        self.failures = 0

    def _make_w3(self, url: str) -> AsyncWeb3[AsyncHTTPProvider]:
        """web3's own retry loop is off: this pool decides when to retry and where."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        provider = OwnSessionHTTPProvider(
            url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
        )
        return AsyncWeb3(provider)

    @property
    def current_url(self) -> str:
        """The endpoint calls go to now."""
        return self.urls[self._index]

    def web3(self) -> AsyncWeb3[AsyncHTTPProvider]:
        """The AsyncWeb3 of the current endpoint, for callers that want web3's own API."""
        return self._w3s[self._index]

    def _order(self) -> list[int]:
        """Current endpoint first; after failback_s on a fallback, the primary is retried."""
        n = len(self.urls)
        start = self._index
        if start != 0 and time.monotonic() - self._switched_at > self.failback_s:
            start = 0
        return [(start + i) % n for i in range(n)]

    def _use(self, index: int, why: str) -> None:
        if index == self._index:
            return
        old = self.urls[self._index]
        self._index = index
        self._switched_at = time.monotonic()
        log.warning("RPC now %s (was %s: %s)", url_host(self.urls[index]), url_host(old), why)
        if self.on_switch is not None:
            self.on_switch(self.urls[index], old, why)

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One JSON-RPC call; connection errors, timeouts, 429/5xx fail over and back off."""
        self.calls += 1
        reasons: dict[str, str] = {}
        for attempt in range(self.retries + 1):
            for index in self._order():
                url = self.urls[index]
                try:
                    provider = self._w3s[index].provider
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel.
                    async with asyncio.timeout(self.timeout_s + 1.0):
                        response = await provider.make_request(RPCEndpoint(method), list(params))
                except aiohttp.ClientResponseError as exc:
                    why = "rate limited (HTTP 429)" if exc.status == 429 else f"HTTP {exc.status}"
                except (aiohttp.ClientError, OSError) as exc:
                    why = f"cannot connect ({type(exc).__name__}: {exc})"
                except TimeoutError:
                    why = f"no answer within {self.timeout_s:g} s"
                else:
                    error = response.get("error")
                    if error is None:
                        self._use(index, reasons.get(self.current_url, "recovered"))
                        return response.get("result")
                    code, message = rpc_error_fields(error)
                    lowered = message.lower()
                    if code == 429 or any(w in lowered for w in _RATE_LIMIT_WORDS):
                        why = f"rate limited ({message})"
                    elif method == "eth_getLogs" and (
                        code == -32005 or any(w in lowered for w in _RANGE_WORDS)
                    ):
                        raise RangeTooLarge(method, url_host(url), code, message)
                    else:
                        raise RpcCallError(method, url_host(url), code, message)
                self.failures += 1
                reasons[url] = why
                if index != self._index:  # a failed failback: stay put for another period
                    self._switched_at = time.monotonic()
                log.info("RPC %s at %s failed: %s", method, url_host(url), why)
            if attempt < self.retries:
                await asyncio.sleep(min(self.backoff_s * 2**attempt, self.max_backoff_s))
        listed = "; ".join(f"{url_host(u)}: {r}" for u, r in reasons.items())
        raise RpcUnavailable(
            f"no RPC endpoint answered {method} after {self.retries + 1} rounds ({listed}). "
            "Check that the node or provider is up and reachable, or add another URL to "
            "chain.rpc_urls; the node retries on its own."
        )

    async def block_number(self) -> int:
        """The latest block number."""
        return int(str(await self.request("eth_blockNumber")), 16)

    async def get_block(self, number: int) -> dict[str, Any] | None:
        """A block header (no transactions) as raw JSON, or None when there is no such block."""
        result = await self.request("eth_getBlockByNumber", [hex(number), False])
        return cast("dict[str, Any] | None", result)

    async def get_logs(self, filter_params: dict[str, Any]) -> list[dict[str, Any]]:
        """Raw logs; RangeTooLarge when the provider caps the range or the result size."""
        return cast("list[dict[str, Any]]", await self.request("eth_getLogs", [filter_params]))

    async def close(self) -> None:
        """Close the HTTP sessions this pool opened."""
        for w3 in self._w3s:
            with contextlib.suppress(Exception):
                await cast(OwnSessionHTTPProvider, w3.provider).close_session()


class OwnSessionHTTPProvider(AsyncHTTPProvider):
    """AsyncHTTPProvider posting through a keep-alive aiohttp session of its own.

    web3 8's session cache takes a process-wide threading.Lock, through an executor, on every
    async request; a request cancelled while that acquire is pending leaves the lock held for
    good, and every later web3 HTTP call in the process, sync ones too, hangs. Our status
    refresh is cancelled on a timer, so the cache is bypassed rather than hoped around.
    """

    _own_session: aiohttp.ClientSession | None = None

    def __init__(self, *args: Any, force_close: bool = False, **kwargs: Any) -> None:
        """`force_close`: a new connection per request, as web3's own sessions do."""
        super().__init__(*args, **kwargs)
        self._force_close = force_close

    async def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        session = self._own_session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(force_close=self._force_close)
            session = aiohttp.ClientSession(raise_for_status=True, connector=connector)
            self._own_session = session
        kwargs = dict(self.get_request_kwargs())
        async with session.post(str(self.endpoint_uri), data=request_data, **kwargs) as response:
            return await response.read()

    async def close_session(self) -> None:
        """Close the keep-alive session (a later request opens a new one)."""
        session, self._own_session = self._own_session, None
        if session is not None:
            await session.close()


def rpc_error_fields(error: Any) -> tuple[int, str]:
    """JSON-RPC error objects differ between providers; get a code and a message out."""
    if isinstance(error, dict):
        code = error.get("code", 0)
        return (code if isinstance(code, int) else 0), str(error.get("message", error))
    return 0, str(error)
