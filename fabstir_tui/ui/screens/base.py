"""What every live screen shares: its own engine feed, the status header and a draw throttle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual.app import App
from textual.reactive import var
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from fabstir_tui.engine import events as ev
from fabstir_tui.engine.chain import events as cev
from fabstir_tui.engine.jobs.views import JobsChanged
from fabstir_tui.engine.node import Node, NodeSnapshot
from fabstir_tui.ui import messages as msg
from fabstir_tui.ui.bridge import EngineFeed
from fabstir_tui.ui.job_format import jobs_summary
from fabstir_tui.ui.peer_format import p2p_summary
from fabstir_tui.ui.widgets.status_header import StatusHeader

if TYPE_CHECKING:
    from fabstir_tui.engine.api.traffic import ApiSnapshot
    from fabstir_tui.ui.app import FabstirApp

API_REFRESH_S = 1.0  # the API's traffic has no events: the header reads its counters this often

HEADER_EVENTS: tuple[type[ev.Event], ...] = (
    ev.NodeStateChanged,
    ev.GpuSampled,
    ev.HostSampled,
    ev.ModelLoaded,
    ev.ModelUnloaded,
    ev.ModelWorkerDied,
    ev.ModelLoadFailed,
    cev.ChainStatus,
    ev.PeersChanged,
    JobsChanged,
)


def report_worker_failure(node: Node, app: App[Any], event: Worker.StateChanged) -> None:
    """A UI worker that failed says so (in the log and on screen) instead of vanishing."""
    if event.state == WorkerState.ERROR:
        error = event.worker.error
        text = f"{event.worker.name or 'a task'} failed: {type(error).__name__}: {error}"
        node.log("error", "ui", text)
        app.notify(text, title="UI error", severity="error", markup=False)


def gpu_summary(snapshot: ev.GpuSnapshot | None) -> str:
    """The GPU in a dozen characters: utilisation and the hottest temperature."""
    if snapshot is None:
        return "GPU …"
    if not snapshot.available or not snapshot.devices:
        return "no GPU (CPU)"
    devices = snapshot.devices
    utils = [d.utilisation_pct for d in devices if d.utilisation_pct is not None]
    temps = [d.temperature_c for d in devices if d.temperature_c is not None]
    util = f"{sum(utils) / len(utils):.0f}%" if utils else "—%"
    temp = f" {max(temps):.0f}°C" if temps else ""
    replay = " (replay)" if snapshot.backend == "replay" else ""
    if len(devices) == 1:
        name = devices[0].name.removeprefix("NVIDIA ").removeprefix("GeForce ")
        return f"{name} {util}{temp}{replay}"
    return f"{len(devices)} GPUs {util}{temp}{replay}"


def host_summary(host: ev.HostSnapshot | None) -> str:
    if host is None:
        return ""
    ram = 100.0 * host.ram_used_bytes / host.ram_total_bytes if host.ram_total_bytes else 0.0
    return f"CPU {host.cpu_pct:3.0f}% RAM {ram:3.0f}%"  # fixed width: the header must not jitter


def chain_summary(status: cev.ChainStatus | None) -> str:
    """Chain, block, sync and registration in a few cells; empty when no chain is configured."""
    if status is None or not status.enabled:
        return ""
    if status.block is None:
        return f"chain {status.chain_id} …" + (" ✗" if status.error else "")
    sync = "" if status.synced else " sync…"
    reg = " reg" if status.registered else " unreg"
    return f"⛓{status.chain_id} #{status.block}{sync}{reg}"


def api_summary(enabled: bool, status: ApiSnapshot | None, node_state: str) -> str:
    """The header's API segment: its port, requests open now and the last minute's rate;
    nothing when the config leaves the API off (80 columns are better spent on the GPU)."""
    if not enabled:
        return ""
    if status is None:
        return "API …" if node_state in ("starting", "stopped") else "API failed"
    port = f":{status.port}" if status.port is not None else status.url
    return f"API {port} · {status.open_requests} open · {status.per_minute}/min"


def model_summary(loaded: tuple[ev.LoadedModel, ...]) -> str:
    if not loaded:
        return "no model loaded"
    if len(loaded) == 1:
        return loaded[0].name
    return f"{len(loaded)} models loaded"


class LiveScreen(Screen[None]):
    """A screen fed by the engine: its feed's worker lives and dies with the screen.

    State lives in `var`s (no repaint of the whole screen); telemetry is drawn at most
    `ui.refresh_hz` times a second, and only while the screen is the one on display.
    Subclasses extend `FEED_EVENTS`, `live_mount`, `draw_telemetry` and `models_changed`.
    """

    FEED_EVENTS: ClassVar[tuple[type[ev.Event], ...]] = ()

    gpu: var[ev.GpuSnapshot | None] = var(None)
    host: var[ev.HostSnapshot | None] = var(None)
    loaded: var[tuple[ev.LoadedModel, ...]] = var(tuple)

    def __init__(self, node: Node, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.node = node
        self.feed = EngineFeed(self, node.bus, (*HEADER_EVENTS, *self.FEED_EVENTS))
        self._telemetry_dirty = False

    @property
    def fabstir(self) -> FabstirApp:
        return cast("FabstirApp", self.app)

    @property
    def header(self) -> StatusHeader:
        return self.query_one(StatusHeader)

    def on_mount(self) -> None:
        self.feed.start()  # subscribe before reading the snapshot, so nothing falls between
        snapshot = self.node.snapshot()
        self.gpu, self.host, self.loaded = snapshot.gpu, snapshot.host, snapshot.loaded
        header = self.header
        header.node_name = snapshot.name
        header.read_only = snapshot.read_only
        header.node_state = snapshot.state
        header.chain_text = chain_summary(snapshot.chain)
        self.draw_p2p(self.node.peer_book.latest)
        header.jobs_text = jobs_summary(self.node.jobs_snapshot(), self.node.jobs is not None)
        self.draw_api()
        self.live_mount(snapshot)
        self.models_changed()
        self.draw_telemetry()
        self.set_interval(1.0 / self.node.config.ui.refresh_hz, self._flush)
        self.set_interval(API_REFRESH_S, self._refresh_api)

    def on_unmount(self) -> None:
        self.feed.close()

    def on_screen_resume(self) -> None:
        self._flush()
        self.draw_api()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_failure(self.node, self.app, event)

    # --- hooks --------------------------------------------------------------------------

    def live_mount(self, snapshot: NodeSnapshot) -> None:
        """Seed the screen's own widgets from the node's state at mount."""

    def draw_telemetry(self) -> None:
        """Draw the newest GPU and host readings; subclasses call super() first."""
        header = self.header
        header.gpu_text = gpu_summary(self.gpu)
        header.host_text = host_summary(self.host)

    def models_changed(self) -> None:
        """The set of loaded models changed; subclasses call super() first."""
        self.header.model_text = model_summary(self.loaded)

    # --- feed handlers --------------------------------------------------------------------

    def _refresh_api(self) -> None:
        if self.is_current:
            self.draw_api()

    def draw_api(self) -> None:
        """The header's API segment, read from the node's counters (no event carries them)."""
        node = self.node
        self.header.api_text = api_summary(node.config.api.enabled, node.api_status(), node.state)

    def _flush(self) -> None:
        if self._telemetry_dirty and self.is_current:
            self._telemetry_dirty = False
            with self.app.batch_update():
                self.draw_telemetry()

    def on_engine_gpu_sampled(self, message: msg.GpuSampled) -> None:
        self.gpu = message.event.snapshot
        self._telemetry_dirty = True

    def on_engine_host_sampled(self, message: msg.HostSampled) -> None:
        self.host = message.event.snapshot
        self._telemetry_dirty = True

    def on_engine_chain_status(self, message: msg.ChainStatus) -> None:
        self.header.chain_text = chain_summary(message.event)

    def on_engine_node_state_changed(self, message: msg.NodeStateChanged) -> None:
        self.header.node_state = message.event.state
        self.draw_p2p(self.node.peer_book.latest)  # P2P starts and stops with the node
        self.draw_api()  # so does the API

    def on_engine_jobs_changed(self, message: msg.JobsChanged) -> None:
        self.header.jobs_text = jobs_summary(message.event, self.node.jobs is not None)

    def on_engine_peers_changed(self, message: msg.PeersChanged) -> None:
        self.draw_p2p(message.event)

    def draw_p2p(self, peers: ev.PeersChanged) -> None:
        """The header's P2P segment: peer count, reachability as far as known, listen address."""
        node = self.node
        self.header.p2p_text = p2p_summary(
            node.config.p2p.enabled,
            node.p2p_status(),
            node.state,
            peers.connected_count,
            peers.inbound_seen,
        )

    def on_engine_model_loaded(self, message: msg.ModelLoaded) -> None:
        model = message.event.model
        self.loaded = (*[m for m in self.loaded if m.path != model.path], model)
        self.models_changed()

    def on_engine_model_unloaded(self, message: msg.ModelUnloaded) -> None:
        self._drop_loaded(message.event.path)

    def on_engine_model_worker_died(self, message: msg.ModelWorkerDied) -> None:
        self._drop_loaded(message.event.path)
        self.fabstir.announce_failure(message.event)

    def on_engine_model_load_failed(self, message: msg.ModelLoadFailed) -> None:
        self.fabstir.announce_failure(message.event)

    def _drop_loaded(self, path: str) -> None:
        if any(m.path == path for m in self.loaded):
            self.loaded = tuple(m for m in self.loaded if m.path != path)
            self.models_changed()
