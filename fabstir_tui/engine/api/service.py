"""ApiService: the client HTTP API (DESIGN §7) on the node's own asyncio loop.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions.
Other parts of the node mount their routes with `add_route` before `start()` (for example
GET /metrics). The operator key is read from env FABSTIR_API_KEY by the node, never from
the config file, and is never logged.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from fabstir_tui.engine.api.auth import API_KEY_ENV
from fabstir_tui.engine.api.limits import (
    RateLimiter,
    add_cors_headers,
    connections_middleware,
    cors_middleware,
    errors_middleware,
)
from fabstir_tui.engine.api.routes import Routes
from fabstir_tui.engine.api.traffic import ApiSnapshot, ApiTraffic

if TYPE_CHECKING:
    from fabstir_tui.config import ApiSection
    from fabstir_tui.engine.api.metrics import EventCounters
    from fabstir_tui.engine.node import Node

RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BACKLOG = 2048  # many clients may connect at once; those beyond the slots wait in the queue
SHUTDOWN_TIMEOUT_S = 5.0


def split_listen(listen: str) -> tuple[str, int]:
    """'host:port' (IPv6 in brackets) as (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class ApiService:
    """The aiohttp app, its runner and site; `url` says where it listens once started."""

    def __init__(
        self,
        node: Node,
        section: ApiSection | None = None,
        *,
        api_key: str | None = None,
        listen: str | None = None,
    ) -> None:
        self.node = node
        self.section = section or node.config.api
        self._listen = listen or self.section.listen
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        # One per-address allowance for HTTP requests and WebSocket prompts together.
        self.limiter = RateLimiter(self.section.requests_per_minute)
        self.routes = Routes(node, key or None, self.limiter)
        self.traffic = ApiTraffic()
        self._extra: list[tuple[str, str, RouteHandler]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    def add_route(self, method: str, path: str, handler: RouteHandler) -> None:
        """Mount another route (e.g. GET /metrics) on the same server; before start()."""
        if self._runner is not None:
            raise RuntimeError("add routes before the API starts")
        self._extra.append((method, path, handler))

    def build_app(self) -> web.Application:
        """The app with its guards and routes (tests may serve it themselves)."""
        section = self.section

        def log(message: str) -> None:
            self.node.log("error", "api", message)

        app = web.Application(
            client_max_size=section.max_body_bytes,
            middlewares=[
                self.traffic.middleware(),  # outermost: it sees the guards' refusals too
                errors_middleware(log),
                cors_middleware(frozenset(section.cors_allow_origins)),
                connections_middleware(section.max_connections_per_ip),
                self.limiter.middleware(),
            ],
        )
        app.on_response_prepare.append(add_cors_headers)
        self.routes.add_to(app)
        for method, path, handler in self._extra:
            app.router.add_route(method, path, handler)
        return app

    def snapshot(self) -> ApiSnapshot:
        """Where the API listens and its traffic now (for /metrics, status and the header)."""
        return self.traffic.snapshot(self.url)

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        host, port = split_listen(self._listen)
        runner = web.AppRunner(
            self.build_app(),
            handler_cancellation=True,  # a client that leaves cancels its request
            access_log=None,  # request lines could carry prompts in query strings
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=BACKLOG)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}"
        self.node.log("info", "api", f"client API listening on {self.url}")

    async def stop(self) -> None:
        """Stop taking requests; running ones are cancelled (their slots freed)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def start_api(node: Node, counters: EventCounters | None = None) -> ApiService | None:
    """The node's API, started; a failure to bind is logged and the node runs on without it.
    `/metrics` and `/v1/node/status` are mounted here; `counters` the node started reading
    the bus with before its chain and jobs began (else they start here)."""
    from fabstir_tui.engine.api.observability import observability_routes

    service = ApiService(node)
    for method, path, handler in observability_routes(node, counters):
        service.add_route(method, path, handler)
    try:
        await service.start()
    except Exception as exc:
        node.log("error", "api", f"the client API did not start, running without it: {exc}")
        return None
    return service
