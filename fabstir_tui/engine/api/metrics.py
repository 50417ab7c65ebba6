"""`GET /metrics`: the node in Prometheus text format. Gauges are read from the node at scrape
time; counters (tokens, generations, settled transactions) are kept from bus events since this
process started, as Prometheus counters are (rate() copes with the reset on restart)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from aiohttp import web

from fabstir_tui.engine.api.prom_text import CONTENT_TYPE, Exposition
from fabstir_tui.engine.chain.events import TxSettled
from fabstir_tui.engine.events import (
    Event,
    GenerationFailed,
    GenerationFinished,
    NodeStateChanged,
    Subscription,
)
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.node import NodeState
from fabstir_tui.engine.p2p.service import package_version

if TYPE_CHECKING:
    from fabstir_tui.engine.jobs.views import JobView
    from fabstir_tui.engine.node import Node

# Settled statuses that mean the transaction did not do its work ("replaced" is a speed-up).
TX_ERROR_STATUSES = ("failed", "dropped")
TX_FINAL_STATUSES = ("mined", "failed", "replaced", "dropped")
_ENDED_STATES = ("stopping", "stopped", "failed")  # "failed": the start failed for good
# A speed from fewer tokens is a few token gaps wide: a 2-token reply reads thousands a second
# (the models screen's median skips them too).
MIN_SPEED_TOKENS = 8

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def model_label(path: str) -> str:
    """The file name: readable in dashboards and free of the operator's directory layout."""
    return Path(path).name


def model_labels(paths: Iterable[str]) -> dict[str, str]:
    """Each path's label: its file name, or with parent folders where two models share a file
    name (llama/model.gguf, qwen/model.gguf): two series with one label set are invalid."""
    by_name: dict[str, list[str]] = {}
    for path in sorted(set(paths)):
        by_name.setdefault(Path(path).name, []).append(path)
    labels: dict[str, str] = {}
    for same_name in by_name.values():
        for depth in range(1, max(len(Path(p).parts) for p in same_name) + 1):
            tried = {p: "/".join(Path(p).parts[-depth:]) for p in same_name}
            if len(set(tried.values())) == len(tried):
                break
        labels.update(tried)
    return labels


@dataclass(slots=True)
class ModelTotals:
    """One model's totals since this process started."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished: int = 0
    failed: int = 0
    last_tokens_per_s: float | None = None


class EventCounters:
    """Counters fed by the node's bus on a task of their own, so a scrape never misses a
    generation that ended while nobody was scraping."""

    def __init__(self) -> None:
        self.models: dict[str, ModelTotals] = {}
        self.tx_settled: Counter[str] = Counter()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped_before = 0

    @property
    def dropped(self) -> int:
        """Events the bus dropped because this reader fell behind (then counters undercount)."""
        return self.dropped_before + (self._sub.dropped if self._sub is not None else 0)

    def model(self, path: str) -> ModelTotals:
        totals = self.models.get(path)
        if totals is None:
            totals = self.models[path] = ModelTotals()
        return totals

    def apply(self, event: Event) -> None:
        """Fold one event into the totals."""
        if isinstance(event, GenerationFinished):
            totals = self.model(event.model_path)
            totals.prompt_tokens += event.prompt_tokens
            totals.completion_tokens += event.completion_tokens
            totals.finished += 1
            if event.tokens_per_s is not None and event.completion_tokens >= MIN_SPEED_TOKENS:
                totals.last_tokens_per_s = event.tokens_per_s
        elif isinstance(event, GenerationFailed):
            self.model(event.model_path).failed += 1
        elif isinstance(event, TxSettled):
            self.tx_settled[event.status] += 1

    def ensure_started(self, node: Node) -> None:
        """Subscribe and start reading while the node runs; a no-op when already reading or
        when no asyncio loop runs here (the first scrape starts it then)."""
        if self._task is not None and not self._task.done():
            return
        if node.state in _ENDED_STATES:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._sub = node.bus.subscribe(
            GenerationFinished, GenerationFailed, TxSettled, NodeStateChanged, maxsize=10_000
        )
        self._task = loop.create_task(self._read(self._sub), name="metrics-counters")

    async def _read(self, sub: Subscription) -> None:
        try:
            async for event in sub:
                if isinstance(event, NodeStateChanged):
                    if event.state in _ENDED_STATES:
                        break
                    continue
                self.apply(event)
        finally:
            self.dropped_before += sub.dropped
            sub.close()
            if self._sub is sub:
                self._sub = None

    async def close(self) -> None:
        """Stop reading (the API's shutdown); the totals stay readable."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _node_metrics(out: Exposition, node: Node) -> None:
    out.add(
        "fabstir_node_info",
        "gauge",
        "Constant 1, labelled with the node's name and software version.",
        1,
        {"name": node.config.node.name, "version": package_version()},
    )
    for state in get_args(NodeState):
        out.add(
            "fabstir_node_state",
            "gauge",
            "1 for the node's current lifecycle state, 0 for the others.",
            node.state == state,
            {"state": state},
        )


def _model_metrics(out: Exposition, node: Node, counters: EventCounters) -> None:
    loaded = node.loaded_models()
    out.add("fabstir_models_loaded", "gauge", "Models resident in a worker process.", len(loaded))
    tokens_help = "Tokens processed since the node started, by model and kind."
    out.declare("fabstir_tokens_total", "counter", tokens_help)
    out.declare("fabstir_generations_total", "counter", "Generations ended, by model and outcome.")
    out.declare(
        "fabstir_last_generation_tokens_per_second",
        "gauge",
        "Decode speed of the model's most recent finished generation.",
    )
    paths = {m.path for m in loaded} | set(counters.models)
    labels = model_labels(paths)
    for path in sorted(paths):
        totals = counters.model(path)
        model = {"model": labels[path]}
        out.add(
            "fabstir_tokens_total",
            "counter",
            tokens_help,
            totals.prompt_tokens,
            {**model, "kind": "prompt"},
        )
        out.add(
            "fabstir_tokens_total",
            "counter",
            tokens_help,
            totals.completion_tokens,
            {**model, "kind": "completion"},
        )
        for outcome, count in (("finished", totals.finished), ("failed", totals.failed)):
            out.add(
                "fabstir_generations_total", "counter", "", count, {**model, "outcome": outcome}
            )
        if totals.last_tokens_per_s is not None:
            out.add(
                "fabstir_last_generation_tokens_per_second",
                "gauge",
                "",
                totals.last_tokens_per_s,
                model,
            )
    for m in loaded:
        slots = node.models.slot_queue(m.path)
        model = {"model": labels[m.path]}
        out.add(
            "fabstir_inference_queue_depth",
            "gauge",
            "Requests waiting for an inference slot of the model.",
            slots.waiting,
            model,
        )
        out.add(
            "fabstir_inference_slots_busy",
            "gauge",
            "Inference slots generating now.",
            slots.busy,
            model,
        )
        out.add(
            "fabstir_inference_slots",
            "gauge",
            "Inference slots of the model.",
            slots.capacity,
            model,
        )


def _job_counts(views: Iterable[JobView]) -> Counter[tuple[str, str]]:
    return Counter((v.key.kind.value, v.state.value) for v in views)


def _job_metrics(out: Exposition, node: Node) -> None:
    snap = node.jobs_snapshot()
    out.add(
        "fabstir_jobs_pipeline_running",
        "gauge",
        "1 while the job pipeline runs (it needs a market and a node key).",
        node.jobs is not None,
    )
    jobs_help = "Jobs and sessions by view (market, queue, done), kind and state."
    out.declare("fabstir_jobs", "gauge", jobs_help)
    for view, items in (("market", snap.market), ("queue", snap.queue), ("done", snap.done)):
        for (kind, state), count in sorted(_job_counts(items).items()):
            out.add(
                "fabstir_jobs",
                "gauge",
                jobs_help,
                count,
                {"view": view, "kind": kind, "state": state},
            )
    active = sum(
        1
        for v in (*snap.queue, *snap.market)
        if v.key.kind is JobKind.SESSION and v.state is JobState.ACTIVE
    )
    out.add("fabstir_sessions_active", "gauge", "Direct sessions in the active state.", active)
    out.add(
        "fabstir_jobs_lost", "gauge", "Jobs another host claimed first (recent).", snap.lost_count
    )


def _gpu_metrics(out: Exposition, node: Node) -> None:
    gpu = node.telemetry.latest_gpu()
    out.declare("fabstir_gpu_available", "gauge", "1 when GPU telemetry reads a GPU.")
    if gpu is None:
        return
    out.add("fabstir_gpu_available", "gauge", "", gpu.available, {"backend": gpu.backend})
    readings = (
        (
            "fabstir_gpu_utilization_percent",
            "GPU utilisation over the last sample period.",
            "utilisation_pct",
        ),
        ("fabstir_gpu_memory_used_bytes", "GPU memory in use.", "memory_used_bytes"),
        ("fabstir_gpu_memory_total_bytes", "GPU memory on the board.", "memory_total_bytes"),
        ("fabstir_gpu_temperature_celsius", "GPU core temperature.", "temperature_c"),
        ("fabstir_gpu_power_watts", "GPU power draw.", "power_w"),
        ("fabstir_gpu_power_limit_watts", "GPU enforced power limit.", "power_limit_w"),
    )
    for name, help_text, _ in readings:
        out.declare(name, "gauge", help_text)
    for device in gpu.devices:
        labels = {"gpu": str(device.index), "name": device.name, "uuid": device.uuid or ""}
        for name, help_text, attr in readings:
            value = getattr(device, attr)
            if value is not None:  # a field NVML could not read is absent, never a fake 0
                out.add(name, "gauge", help_text, value, labels)


def _peer_and_host_metrics(out: Exposition, node: Node) -> None:
    peers = node.peers()
    out.add(
        "fabstir_peers_connected",
        "gauge",
        "libp2p peers connected now.",
        sum(1 for p in peers if p.connected),
    )
    out.add("fabstir_peers_known", "gauge", "Peers in the peer book.", len(peers))
    host = node.telemetry.latest_host()
    if host is not None:
        out.add("fabstir_host_cpu_percent", "gauge", "Host CPU utilisation.", host.cpu_pct)
        out.add("fabstir_host_memory_used_bytes", "gauge", "Host RAM in use.", host.ram_used_bytes)
        out.add("fabstir_host_memory_total_bytes", "gauge", "Host RAM.", host.ram_total_bytes)


def _chain_metrics(out: Exposition, node: Node, counters: EventCounters) -> None:
    status = node.chain_status()
    enabled = status is not None and status.enabled
    out.add("fabstir_chain_enabled", "gauge", "1 when the node follows a chain.", enabled)
    earnings = (
        (
            "fabstir_earnings_total_base_units",
            "Earned in all, in the token's base units.",
            "earned_total",
        ),
        (
            "fabstir_earnings_withdrawable_base_units",
            "Withdrawable now, in base units.",
            "withdrawable",
        ),
        (
            "fabstir_earnings_escrow_base_units",
            "Held in job escrow for us, in base units.",
            "held_in_escrow",
        ),
        ("fabstir_payment_token_decimals", "Decimals of the payment token.", "decimals"),
    )
    for name, help_text, _ in earnings:
        out.declare(name, "gauge", help_text)
    if status is not None and status.enabled:
        if status.block is not None:
            out.add("fabstir_chain_block", "gauge", "Newest block the node has seen.", status.block)
        out.add(
            "fabstir_chain_synced", "gauge", "1 when the follower has caught up.", status.synced
        )
        if status.eth_balance_wei is not None:
            out.add(
                "fabstir_eth_balance_wei",
                "gauge",
                "The node key's ETH balance.",
                status.eth_balance_wei,
            )
        for balance in status.balances:
            labels = {"token": balance.token, "symbol": balance.symbol}
            for name, help_text, attr in earnings:
                out.add(name, "gauge", help_text, getattr(balance, attr), labels)
    settled_help = "Journaled transactions that reached a final state, by status."
    errors_help = "Transactions that failed or were dropped."
    for status_name in TX_FINAL_STATUSES:
        count = counters.tx_settled[status_name]
        out.add("fabstir_tx_settled_total", "counter", settled_help, count, {"status": status_name})
    for status_name in TX_ERROR_STATUSES:
        count = counters.tx_settled[status_name]
        out.add("fabstir_tx_errors_total", "counter", errors_help, count, {"status": status_name})


def _api_metrics(out: Exposition, node: Node) -> None:
    """The API's own traffic (the scrape in progress counts as one open request)."""
    api = node.api_status()
    requests_help = "HTTP requests ended, by route (canonical path or other) and status code."
    refusals_help = "Requests refused with a JSON error, by the error's code."
    out.declare("fabstir_api_requests_total", "counter", requests_help)
    out.declare("fabstir_api_refusals_total", "counter", refusals_help)
    out.declare("fabstir_api_open_requests", "gauge", "Requests in progress, streams included.")
    out.declare("fabstir_api_open_websockets", "gauge", "WebSocket sessions connected now.")
    if api is None:
        return
    for row in api.requests:
        labels = {"route": row.route, "code": str(row.code)}
        out.add("fabstir_api_requests_total", "counter", requests_help, row.count, labels)
    for code, count in api.refusals:
        out.add("fabstir_api_refusals_total", "counter", refusals_help, count, {"code": code})
    out.add("fabstir_api_open_requests", "gauge", "", api.open_requests)
    out.add("fabstir_api_open_websockets", "gauge", "", api.open_websockets)


def collect(node: Node, counters: EventCounters) -> str:
    """The whole exposition at this instant."""
    out = Exposition()
    _node_metrics(out, node)
    _model_metrics(out, node, counters)
    _job_metrics(out, node)
    _gpu_metrics(out, node)
    _peer_and_host_metrics(out, node)
    _chain_metrics(out, node, counters)
    _api_metrics(out, node)
    out.add(
        "fabstir_metrics_events_dropped_total",
        "counter",
        "Bus events the metrics reader missed (counters above undercount by these).",
        counters.dropped,
    )
    return out.render()


def metrics_handler(node: Node, counters: EventCounters) -> Handler:
    """The `/metrics` handler over one node and its counters."""

    async def handle(_request: web.Request) -> web.StreamResponse:
        counters.ensure_started(node)
        text = collect(node, counters)
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    return handle
