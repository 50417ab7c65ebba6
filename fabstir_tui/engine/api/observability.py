"""The operator's read-only routes (`/metrics`, `/v1/node/status`) as (method, path, handler)
triples, so the API server mounts them without knowing how they are built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir_tui.engine.api.metrics import EventCounters, Handler, metrics_handler
from fabstir_tui.engine.api.status import STATUS_PATH, status_handler

if TYPE_CHECKING:
    from fabstir_tui.engine.node import Node

METRICS_PATH = "/metrics"


def observability_routes(
    node: Node, counters: EventCounters | None = None
) -> list[tuple[str, str, Handler]]:
    """[("GET", "/metrics", ...), ("GET", "/v1/node/status", ...)]; called on the node's loop,
    the counters start reading the bus at once (else at the first scrape). Pass `counters` to
    close them on shutdown (`await counters.close()`); otherwise they stop with the node."""
    counters = counters if counters is not None else EventCounters()
    counters.ensure_started(node)
    return [
        ("GET", METRICS_PATH, metrics_handler(node, counters)),
        ("GET", STATUS_PATH, status_handler(node)),
    ]
