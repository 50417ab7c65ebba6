"""Immutable engine events and the asyncio bus that carries them to the UI and the CLI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

LogLevel = Literal["debug", "info", "warning", "error"]


def _now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event; `ts` is wall-clock seconds so logs and audit lines sort."""

    ts: float = field(default_factory=_now, kw_only=True)


# --- models -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the registry knows about one GGUF file on disk."""

    path: str
    name: str
    size_bytes: int
    mtime_ns: int
    architecture: str | None = None
    parameters: int | None = None
    quantisation: str | None = None
    context_length: int | None = None
    has_chat_template: bool = False
    sha256: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model resident in a worker process."""

    path: str
    name: str
    worker_pid: int
    n_ctx: int
    n_threads: int
    n_gpu_layers: int
    gpu_offload: bool
    load_s: float
    chat_format: str | None


@dataclass(frozen=True, slots=True)
class ModelsScanned(Event):
    models: tuple[ModelInfo, ...]


@dataclass(frozen=True, slots=True)
class ModelHashProgress(Event):
    path: str
    done_bytes: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class ModelHashed(Event):
    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class ModelLoadProgress(Event):
    path: str
    stage: str
    fraction: float


@dataclass(frozen=True, slots=True)
class ModelLoaded(Event):
    model: LoadedModel


@dataclass(frozen=True, slots=True)
class ModelLoadFailed(Event):
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ModelUnloaded(Event):
    path: str


@dataclass(frozen=True, slots=True)
class ModelWorkerDied(Event):
    path: str
    reason: str
    exit_code: int | None


# --- generation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenerationStarted(Event):
    request_id: str
    model_path: str


@dataclass(frozen=True, slots=True)
class GenerationFinished(Event):
    request_id: str
    model_path: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    ttft_s: float | None
    tokens_per_s: float | None


@dataclass(frozen=True, slots=True)
class GenerationFailed(Event):
    request_id: str
    model_path: str
    reason: str


# --- telemetry ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One GPU's reading; a field is None when NVML could not read it (see `errors`)."""

    index: int
    name: str
    uuid: str | None = None
    utilisation_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    fan_pct: float | None = None
    sm_clock_mhz: int | None = None
    processes: int | None = None
    errors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """GPU state, or why there is none (`available=False` with `reason`)."""

    available: bool
    backend: str
    reason: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    devices: tuple[GpuDevice, ...] = ()


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    cpu_pct: float
    cpu_count: int
    load_avg_1m: float
    ram_used_bytes: int
    ram_total_bytes: int
    disk_path: str
    disk_free_bytes: int
    disk_total_bytes: int


@dataclass(frozen=True, slots=True)
class GpuSampled(Event):
    snapshot: GpuSnapshot


@dataclass(frozen=True, slots=True)
class HostSampled(Event):
    snapshot: HostSnapshot


# --- node, logs, audit --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStateChanged(Event):
    state: Literal["starting", "running", "stopping", "stopped", "failed"]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LogRecorded(Event):
    level: LogLevel
    source: str
    message: str


@dataclass(frozen=True, slots=True)
class OperatorActionRecorded(Event):
    """An audit line: every operator action, what it was and how it ended."""

    action: str
    detail: str
    outcome: str


# --- peers (the P2P peer book) ---------------------------------------------------------

PeerDirection = Literal["inbound", "outbound", "unknown"]
# pending: not asked yet; ok: answered; unsupported: the peer does not speak the info protocol
# (asked again only after it reconnects); failed: asked and no usable answer (retried later).
InfoState = Literal["pending", "ok", "unsupported", "failed"]


@dataclass(frozen=True, slots=True)
class PeerModel:
    """One model a peer offers, as its info answer or its latest announcement priced it."""

    id: str
    name: str
    price_per_million: int
    price_token: str = ""


@dataclass(frozen=True, slots=True)
class PeerView:
    """Everything the node knows about one peer at one instant; wall-clock times."""

    peer_id: str
    addrs: tuple[str, ...]
    direction: PeerDirection
    connected: bool
    first_seen: float
    last_seen: float
    ping_ms: float | None = None
    ping_error: str = ""
    info_state: InfoState = "pending"
    info_error: str = ""
    info_queries: int = 0
    info_at: float | None = None
    models: tuple[PeerModel, ...] = ()
    version: str = ""
    api_url: str = ""
    chain_address: str = ""
    gpu_name: str = ""
    gpu_vram_mib: int | None = None
    gpu_count: int = 0
    max_jobs: int | None = None
    active_jobs: int | None = None
    announced_at: float | None = None

    def lowest_price(self) -> PeerModel | None:
        """The cheapest model offered, for the one-column price summary."""
        return min(self.models, key=lambda m: m.price_per_million, default=None)


@dataclass(frozen=True, slots=True)
class PeersChanged(Event):
    """The whole peer book (connected first); `inbound_seen` says another node dialled us."""

    peers: tuple[PeerView, ...]
    inbound_seen: bool = False

    @property
    def connected_count(self) -> int:
        return sum(1 for p in self.peers if p.connected)


# --- the bus ------------------------------------------------------------------------------


class Subscription:
    """A bounded queue of events; when a reader falls behind the oldest are dropped, never the
    publisher blocked, so a slow screen cannot stall the engine."""

    def __init__(self, bus: EventBus, kinds: tuple[type[Event], ...] | None, maxsize: int) -> None:
        self._bus = bus
        self._kinds = kinds
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def wants(self, event: Event) -> bool:
        return self._kinds is None or isinstance(event, self._kinds)

    def offer(self, event: Event | None) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1

    async def get(self) -> Event:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)
        self.offer(None)


class EventBus:
    """Fan-out of engine events to any number of subscribers on one asyncio loop."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the loop so threads can publish through `publish_threadsafe`."""
        self._loop = loop

    def subscribe(self, *kinds: type[Event], maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, kinds or None, maxsize)
        self._subs.append(sub)
        return sub

    @property
    def subscriber_count(self) -> int:
        """How many readers are attached; a screen that closes must drop its own."""
        return len(self._subs)

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            if sub.wants(event):
                sub.offer(event)

    def publish_threadsafe(self, event: Event) -> None:
        """Publish from a non-loop thread (NVML sampler, hasher)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self.publish, event)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
