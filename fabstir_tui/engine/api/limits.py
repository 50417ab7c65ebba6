"""The API's guards, as aiohttp middlewares: every refusal as JSON (never a stack trace),
CORS for an allowlist of origins only, concurrent requests per IP, and requests per minute
per IP (429 with Retry-After). The body size limit is aiohttp's `client_max_size` (413)."""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from fabstir_tui.engine.api.errors import ApiError, error_response

_log = logging.getLogger(__name__)
MAX_TRACKED_ADDRESSES = 100_000
_HTTP_CODES = {
    404: ("not_found", "there is no such route; see /v1/models, /v1/completions, /health"),
    405: ("method_not_allowed", "this route does not take that method"),
    413: ("body_too_large", "the request body is larger than this node accepts"),
}


def client_ip(request: web.Request) -> str:
    """The address the limits count against (no proxy headers are trusted: a proxy must do
    its own limits)."""
    return limit_key(request.remote or "unknown")


def limit_key(remote: str) -> str:
    """An IPv4 address as it is; an IPv6 one as its /64, which one subscriber usually holds
    whole (one address each would give them 2^64 allowances)."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote  # a Unix socket's peer or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def errors_middleware(log: Callable[[str], None]) -> Middleware:
    """Turn ApiError, aiohttp's HTTP errors and our own bugs into the JSON error shape."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
            if exc.status == 413:
                message += f" ({exc.text})" if exc.text else ""
            return error_response(ApiError(exc.status, code, message))
        except ConnectionResetError:  # the client left mid-response: nothing to answer
            raise
        except Exception as exc:  # our bug: a short answer, the detail to the log
            log(f"{request.method} {request.path} failed: {type(exc).__name__}: {exc}")
            return error_response(ApiError(500, "internal", "the node could not serve this"))

    return errors


_OUR_HEADERS = ("Authorization", "Content-Type", "X-Fabstir-Job", "X-Fabstir-Session")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
MAX_ASKED_HEADERS = 32


def _allowed_headers(request: web.Request) -> str:
    """Ours plus those an allowed origin's preflight asks for: the OpenAI SDKs for browsers
    send their own (x-stainless-*) on every request, and a fixed list would block them."""
    asked = request.headers.get("Access-Control-Request-Headers", "").split(",")
    names = [name.strip() for name in asked if _HEADER_NAME.fullmatch(name.strip())]
    ours = {name.lower() for name in _OUR_HEADERS}
    extra = sorted({name.lower() for name in names[:MAX_ASKED_HEADERS]} - ours)
    return ", ".join([*_OUR_HEADERS, *extra])


def cors_middleware(allowed: frozenset[str]) -> Middleware:
    """Answer preflights and tag responses for origins on the allowlist (no `*`)."""

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in (
            request.headers
        )
        if preflight:
            if origin not in allowed:
                raise ApiError(
                    403, "origin_not_allowed", f"origin {str(origin)[:100]!r} is not allowed"
                )
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": str(origin),
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": _allowed_headers(request),
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
        if origin is not None and origin in allowed:
            request["cors_origin"] = origin
        return await handler(request)

    return cors


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the allow header, also on streamed and error responses."""
    origin = request.get("cors_origin")
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        response.headers["Vary"] = "Origin"


def connections_middleware(limit: int) -> Middleware:
    """At most `limit` requests in flight per IP (a streaming request holds its connection)."""
    open_by_ip: dict[str, int] = {}

    @web.middleware
    async def connections(request: web.Request, handler: Handler) -> web.StreamResponse:
        ip = client_ip(request)
        if open_by_ip.get(ip, 0) >= limit:
            raise ApiError(
                429,
                "too_many_connections",
                f"{ip} already has {limit} requests open (api.max_connections_per_ip)",
                headers={"Retry-After": "1"},
            )
        open_by_ip[ip] = open_by_ip.get(ip, 0) + 1
        try:
            return await handler(request)
        finally:
            left = open_by_ip[ip] - 1
            if left:
                open_by_ip[ip] = left
            else:
                del open_by_ip[ip]

    return connections


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per IP: `per_minute` requests a minute, bursts up to that many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, ip: str) -> float:
        """0 when the request may go ahead, else the seconds until it could."""
        now = self._clock()
        bucket = self._buckets.pop(ip, None)  # re-inserted below: the dict is oldest-used first
        if bucket is None:
            self._make_room(now)
            bucket = _Bucket(float(self.per_minute), now)
        self._buckets[ip] = bucket
        bucket.tokens = min(self.per_minute, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _make_room(self, now: float) -> None:
        """Keep at most MAX_TRACKED_ADDRESSES: drop the least recently used, refilled ones
        first (they behave as if never seen); at the cap, the oldest anyway."""
        while self._buckets:
            oldest, bucket = next(iter(self._buckets.items()))
            refilled = now - bucket.stamp >= 60.0
            if not refilled and len(self._buckets) < MAX_TRACKED_ADDRESSES:
                return
            del self._buckets[oldest]

    def middleware(self) -> Middleware:
        @web.middleware
        async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
            wait = self.take(client_ip(request))
            if wait > 0:
                raise ApiError(
                    429,
                    "rate_limited",
                    f"more than {self.per_minute} requests a minute from this address; "
                    f"retry in {math.ceil(wait)} s",
                    headers={"Retry-After": str(math.ceil(wait))},
                )
            return await handler(request)

        return rate_limit
