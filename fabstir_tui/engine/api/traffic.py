"""ApiTraffic: what the client API is doing, for /metrics, /v1/node/status and the TUI header —
requests by route and status, requests open now (a stream or a WebSocket stays open for its
life), the last minute's request rate and refusals by their JSON error code.

Plain counters on the node's asyncio loop (the only loop aiohttp runs on): no locks. Labels are
bounded: a route is the matched resource's canonical path (never the raw path) or "other", and
refusal codes beyond MAX_ERROR_CODES fold into "other"."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

OTHER = "other"
WINDOW_S = 60
MAX_ERROR_CODES = 64  # our refusal codes are a fixed set; a cap keeps a bug from growing labels
MAX_ERROR_BODY = 4096  # larger bodies are not our JSON refusals
CLIENT_GONE = 499  # the client left before the answer ended (nginx's convention)
LATE_ERROR = web.RequestKey("fabstir_late_error", tuple)  # (status, code) sent inside a stream


def failed_late(request: web.Request, status: int, code: str) -> None:
    """A stream already answered 200 ended with an error event: count the error, not the 200."""
    request[LATE_ERROR] = (status, code)


@dataclass(frozen=True, slots=True)
class RouteCount:
    """Requests that ended on one route with one status."""

    route: str
    code: int
    count: int


@dataclass(frozen=True, slots=True)
class ApiSnapshot:
    """The API at one instant: where it listens and its traffic since the node started."""

    url: str
    open_requests: int
    open_websockets: int
    requests_total: int
    errors_total: int  # ended with a status >= 400 (client-gone counts: the answer did not end)
    per_minute: int  # requests that arrived in the last 60 s
    requests: tuple[RouteCount, ...] = ()
    refusals: tuple[tuple[str, int], ...] = ()  # (JSON error code, count), by code

    @property
    def port(self) -> int | None:
        """The port of `url`, or None when it has none."""
        _, _, port = self.url.rpartition(":")
        return int(port) if port.isdigit() else None


def route_of(request: web.Request) -> str:
    """The matched resource's canonical path (e.g. /v1/completions), or "other"."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else OTHER


def is_websocket(request: web.Request) -> bool:
    """An upgrade to a WebSocket (it stays open while connected)."""
    return request.headers.get("Upgrade", "").lower() == "websocket"


def error_code_of(response: web.StreamResponse) -> str | None:
    """The `error.code` of a JSON refusal (errors.error_body's shape), or None."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return None
    body = response.body
    if not isinstance(body, bytes) or len(body) > MAX_ERROR_BODY:
        return None
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) and code else None


class ApiTraffic:
    """The counters and the middleware that keeps them; read them with `snapshot(url)`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.open_requests = 0
        self.open_websockets = 0
        self._ended: Counter[tuple[str, int]] = Counter()
        self._refusals: Counter[str] = Counter()
        self._arrivals: deque[list[int]] = deque()  # [second, count], oldest first

    def _arrived(self) -> None:
        second = int(self._clock())
        if self._arrivals and self._arrivals[-1][0] == second:
            self._arrivals[-1][1] += 1
        else:
            self._arrivals.append([second, 1])
        self._forget_old(second)

    def _forget_old(self, second: int) -> None:
        while self._arrivals and self._arrivals[0][0] <= second - WINDOW_S:
            self._arrivals.popleft()

    def per_minute(self) -> int:
        """Requests that arrived in the last WINDOW_S seconds."""
        self._forget_old(int(self._clock()))
        return sum(count for _, count in self._arrivals)

    def record(self, route: str, code: int, error_code: str | None = None) -> None:
        """One request ended on `route` with status `code` (and a refusal's JSON code)."""
        self._ended[(route, code)] += 1
        if error_code is not None:
            if error_code not in self._refusals and len(self._refusals) >= MAX_ERROR_CODES:
                error_code = OTHER
            self._refusals[error_code] += 1

    def snapshot(self, url: str = "") -> ApiSnapshot:
        """The counters now, as an immutable value any reader may keep."""
        requests = tuple(
            RouteCount(route, code, count) for (route, code), count in sorted(self._ended.items())
        )
        return ApiSnapshot(
            url=url,
            open_requests=self.open_requests,
            open_websockets=self.open_websockets,
            requests_total=sum(self._ended.values()),
            errors_total=sum(c for (_, code), c in self._ended.items() if code >= 400),
            per_minute=self.per_minute(),
            requests=requests,
            refusals=tuple(sorted(self._refusals.items())),
        )

    def middleware(self) -> Middleware:
        """The outermost middleware: it sees every answer, the other guards' refusals too."""

        @web.middleware
        async def traffic(request: web.Request, handler: Handler) -> web.StreamResponse:
            websocket = is_websocket(request)
            self._arrived()
            self.open_requests += 1
            self.open_websockets += websocket
            code = 500
            error_code: str | None = None
            try:
                response = await handler(request)
                code = response.status
                if code >= 400:
                    error_code = error_code_of(response)
                elif LATE_ERROR in request:
                    code, error_code = request[LATE_ERROR]
                return response
            except web.HTTPException as exc:
                code = exc.status
                raise
            except (asyncio.CancelledError, ConnectionResetError):
                code = CLIENT_GONE
                raise
            finally:
                self.open_requests -= 1
                self.open_websockets -= websocket
                self.record(route_of(request), code, error_code)

        return traffic
