"""Dashboard (key 1): the node at a glance — GPUs with history, the job queue and earnings in
two lines each, the loaded model, host load."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import var
from textual.widgets import Footer

from fabstir_tui.engine import events as ev
from fabstir_tui.engine.jobs.pipeline import inactive_reason
from fabstir_tui.engine.jobs.views import JobsChanged
from fabstir_tui.engine.node import NodeSnapshot
from fabstir_tui.ui import messages as msg
from fabstir_tui.ui.screens.base import LiveScreen
from fabstir_tui.ui.widgets.gpu_area import GpuArea
from fabstir_tui.ui.widgets.host_panel import HostPanel
from fabstir_tui.ui.widgets.model_panel import ModelPanel, RunFigures
from fabstir_tui.ui.widgets.status_header import StatusHeader
from fabstir_tui.ui.widgets.work_summary import EarningsSummaryPanel, JobsSummaryPanel


class DashboardScreen(LiveScreen):
    """Owns the feed for the GPU, host and generation figures it draws."""

    FEED_EVENTS: ClassVar[tuple[type[ev.Event], ...]] = (
        ev.GenerationStarted,
        ev.GenerationFinished,
        ev.GenerationFailed,
        JobsChanged,
    )

    last_runs: var[dict[str, RunFigures]] = var(dict)
    generating: var[dict[str, str]] = var(dict)

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        yield GpuArea(
            self.node.config.telemetry.history, self.node.telemetry.history, id="gpu-area"
        )
        with Horizontal(id="dashboard-work"):
            yield JobsSummaryPanel(id="jobs-summary-panel")
            yield EarningsSummaryPanel(id="earnings-summary-panel")
        with Horizontal(id="dashboard-bottom"):
            yield ModelPanel(id="model-panel")
            yield HostPanel(id="host-panel")
        yield Footer(compact=True)

    def live_mount(self, snapshot: NodeSnapshot) -> None:
        if snapshot.gpu is not None:
            self.query_one(GpuArea).record(snapshot.gpu)
        self.query_one(EarningsSummaryPanel).status = snapshot.chain
        self._draw_jobs(self.node.jobs_snapshot())

    def _draw_jobs(self, jobs: JobsChanged) -> None:
        node, panel = self.node, self.query_one(JobsSummaryPanel)
        why = ""
        if node.jobs is None:
            if not node.config.chain.enabled:
                why = "no chain configured"
            elif node.state == "running":
                why = inactive_reason(node) or "no node key (keystore)"
        panel.off = f"Pipeline off: {why}" if why else ""
        panel.jobs = jobs if node.jobs is not None else None

    def on_engine_node_state_changed(self, message: msg.NodeStateChanged) -> None:
        super().on_engine_node_state_changed(message)
        self._draw_jobs(self.node.jobs_snapshot())

    def on_engine_jobs_changed(self, message: msg.JobsChanged) -> None:
        super().on_engine_jobs_changed(message)
        self._draw_jobs(message.event)

    def on_engine_chain_status(self, message: msg.ChainStatus) -> None:
        super().on_engine_chain_status(message)
        self.query_one(EarningsSummaryPanel).status = message.event

    def draw_telemetry(self) -> None:
        super().draw_telemetry()
        self.set_class(self.gpu is not None and not self.gpu.available, "-no-gpu")
        self.query_one(GpuArea).show(self.gpu)
        self.query_one(HostPanel).snapshot = self.host

    def models_changed(self) -> None:
        super().models_changed()
        self.query_one(ModelPanel).loaded = self.loaded

    def on_engine_gpu_sampled(self, message: msg.GpuSampled) -> None:
        self.query_one(GpuArea).record(message.event.snapshot)

    def on_engine_generation_started(self, message: msg.GenerationStarted) -> None:
        self.generating[message.event.request_id] = message.event.model_path
        self._draw_runs()

    def on_engine_generation_finished(self, message: msg.GenerationFinished) -> None:
        event = message.event
        self.generating.pop(event.request_id, None)
        self.last_runs[event.model_path] = RunFigures(
            tokens_per_s=event.tokens_per_s,
            ttft_s=event.ttft_s,
            completion_tokens=event.completion_tokens,
            finish_reason=event.finish_reason,
        )
        self._draw_runs()

    def on_engine_generation_failed(self, message: msg.GenerationFailed) -> None:
        self.generating.pop(message.event.request_id, None)
        self._draw_runs()

    def _draw_runs(self) -> None:
        panel = self.query_one(ModelPanel)
        panel.last_runs = tuple(self.last_runs.items())
        panel.generating = frozenset(self.generating.values())
