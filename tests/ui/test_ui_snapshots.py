"""Snapshots of the dashboard and the models screen at 80x24 and 160x48.

Deterministic by construction: a real node whose telemetry samples once at start (interval
60 s), then the rest of a real H200 recording and one recorded host reading are published on
the node's bus one at a time, each drawn before the next; no model is loaded (a worker's pid
would differ), no clock is shown, and the model files sit at a fixed path.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gguf_factory import copy_model, write_not_gguf
from textual.pilot import Pilot
from ui_helpers import H200_REPLAY, make_config, wait_for

from fabstir_tui.engine.events import GpuSampled, GpuSnapshot, HostSampled, HostSnapshot
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.telemetry.nvml import NvmlBackend
from fabstir_tui.engine.telemetry.replay import ReplayEnded, ReplayNvml
from fabstir_tui.ui.app import FabstirApp
from fabstir_tui.ui.screens.models import ModelsScreen
from fabstir_tui.ui.widgets.gpu_area import GpuArea
from fabstir_tui.ui.widgets.host_panel import HostPanel
from fabstir_tui.ui.widgets.metric_row import MetricRow
from fabstir_tui.ui.widgets.status_header import StatusHeader

SNAP_MODELS = Path("/tmp/fabstir-tui-snapshots/models")  # fixed: paths appear on screen
GIB = 1024**3
RECORDED_HOST = HostSnapshot(
    cpu_pct=37.0,
    cpu_count=16,
    load_avg_1m=5.92,
    ram_used_bytes=41 * GIB,
    ram_total_bytes=125 * GIB,
    disk_path="/var/lib/fabstir",
    disk_free_bytes=812 * GIB,
    disk_total_bytes=1863 * GIB,
)
SnapCompare = Callable[..., bool]


def recorded_gpu() -> list[GpuSnapshot]:
    """Every reading in the H200 recording, through the engine's own sampler."""
    backend = NvmlBackend(ReplayNvml(H200_REPLAY, loop=False), name="replay")
    backend.open()
    readings: list[GpuSnapshot] = []
    try:
        while True:
            readings.append(backend.sample(slow=True))
    except ReplayEnded:
        return readings
    finally:
        backend.close()


@pytest.fixture
def snapshot_app(tmp_path: Path, tiny_gguf: Path) -> FabstirApp:
    shutil.rmtree(SNAP_MODELS.parent, ignore_errors=True)
    copy_model(tiny_gguf, SNAP_MODELS / "tiny-llama.gguf")
    write_not_gguf(SNAP_MODELS / "broken.gguf")
    config = make_config(tmp_path / "data", SNAP_MODELS, interval_s=60.0, name="snap-node")
    return FabstirApp(Node(config), config)


async def first_readings_drawn(pilot: Pilot[Any]) -> None:
    """The node's own first GPU and host samples are on screen; no more come for 60 s."""
    app = pilot.app
    assert isinstance(app, FabstirApp)
    await wait_for(pilot, lambda: app.node.state == "running", "the node")
    header = app.screen.query_one(StatusHeader)
    await wait_for(pilot, lambda: header.host_text and header.gpu_text.startswith("H200"), "header")


async def publish_host(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, FabstirApp)
    app.node.bus.publish(HostSampled(RECORDED_HOST))
    header = app.screen.query_one(StatusHeader)
    await wait_for(pilot, lambda: header.host_text == "CPU  37% RAM  33%", "the recorded host")


async def dashboard_with_history(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, FabstirApp)
    await first_readings_drawn(pilot)
    area = app.screen.query_one(GpuArea)
    await wait_for(pilot, lambda: 0 in area.panels, "the GPU panel")
    panel = area.panels[0]
    readings = recorded_gpu()
    for count, reading in enumerate(readings[1:], start=2):
        app.node.bus.publish(GpuSampled(reading))
        await wait_for(pilot, lambda n=count: panel.samples == n, f"reading {count}")
    util = panel.query_one("#gpu-util", MetricRow)
    await wait_for(pilot, lambda: len(util.samples) == len(readings), "the whole history drawn")
    await publish_host(pilot)
    await wait_for(
        pilot, lambda: app.screen.query_one(HostPanel).snapshot == RECORDED_HOST, "host panel"
    )
    app.clear_notifications()


async def models_hashed(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, FabstirApp)
    await first_readings_drawn(pilot)
    await pilot.press("4")
    await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), "the models screen")
    screen = app.screen
    assert isinstance(screen, ModelsScreen)
    tiny = str((SNAP_MODELS / "tiny-llama.gguf").resolve())
    await wait_for(pilot, lambda: screen.table.row_count == 2, "both files listed")
    await wait_for(pilot, lambda: len(screen.table.get_cell(tiny, "sha256").plain) == 8, "the hash")
    await first_readings_drawn(pilot)
    await publish_host(pilot)
    app.clear_notifications()


def test_dashboard_80x24(snap_compare: SnapCompare, snapshot_app: FabstirApp) -> None:
    assert snap_compare(snapshot_app, terminal_size=(80, 24), run_before=dashboard_with_history)


def test_dashboard_160x48(snap_compare: SnapCompare, snapshot_app: FabstirApp) -> None:
    assert snap_compare(snapshot_app, terminal_size=(160, 48), run_before=dashboard_with_history)


def test_models_80x24(snap_compare: SnapCompare, snapshot_app: FabstirApp) -> None:
    assert snap_compare(snapshot_app, terminal_size=(80, 24), run_before=models_hashed)


def test_models_160x48(snap_compare: SnapCompare, snapshot_app: FabstirApp) -> None:
    assert snap_compare(snapshot_app, terminal_size=(160, 48), run_before=models_hashed)
