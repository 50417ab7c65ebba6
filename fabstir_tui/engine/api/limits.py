"""The API's guards, as aiohttp middlewares: every refusal as JSON (never a stack trace),
CORS for an allowlist of origins only, concurrent requests per IP, and requests per minute
per IP (429 with Retry-After). The body size limit is aiohttp's `client_max_size` (413)."""

from __future__ import annotations

import logging
import math
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
    """The peer's address (no proxy headers are trusted: a proxy must do its own limits)."""
    return request.remote or "unknown"


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
                    "Access-Control-Allow-Headers": (
                        "Authorization, Content-Type, X-Fabstir-Job, X-Fabstir-Session"
                    ),
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
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
                self._forget_full(now)
            bucket = self._buckets[ip] = _Bucket(float(self.per_minute), now)
        bucket.tokens = min(self.per_minute, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop addresses whose buckets have refilled: they behave as if never seen."""
        full = 60.0
        for ip in [ip for ip, b in self._buckets.items() if now - b.stamp >= full]:
            del self._buckets[ip]

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
