"""The dashboard's GPU column: one panel per device, or one panel saying why there is none."""

from __future__ import annotations

from collections.abc import Callable

from textual.containers import VerticalScroll

from fabstir_tui.engine.events import GpuDevice, GpuSnapshot
from fabstir_tui.ui.widgets.gpu_panel import GpuPanel
from fabstir_tui.ui.widgets.no_gpu_panel import NoGpuPanel

HistorySeed = Callable[[int], list[GpuDevice]]


class GpuArea(VerticalScroll):
    """Records every reading it is given; draws only when asked (at the screen's rate)."""

    def __init__(self, history_len: int, seed: HistorySeed, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._history_len = history_len
        self._seed = seed
        self._panels: dict[int, GpuPanel] = {}
        self._last: GpuSnapshot | None = None

    def compose(self) -> list[NoGpuPanel]:
        return [NoGpuPanel(id="no-gpu")]

    @property
    def panels(self) -> dict[int, GpuPanel]:
        return dict(self._panels)

    def record(self, snapshot: GpuSnapshot) -> None:
        """Add a reading to each device's history; a panel appears for a new device."""
        if snapshot is self._last:
            return
        self._last = snapshot
        if not snapshot.available:
            return
        for device in snapshot.devices:
            panel = self._panels.get(device.index)
            if panel is None:
                seed = self._seed(device.index)
                if seed and seed[-1] == device:
                    seed.pop()
                panel = GpuPanel(device.index, self._history_len, seed)
                self._panels[device.index] = panel
                self.mount(panel)
            panel.record(device)

    def show(self, snapshot: GpuSnapshot | None) -> None:
        """Draw the newest reading, or say why there is no GPU."""
        no_gpu = self.query_one("#no-gpu", NoGpuPanel)
        available = snapshot is not None and snapshot.available
        no_gpu.display = not available
        if snapshot is None or not snapshot.available:
            no_gpu.waiting = snapshot is None
            no_gpu.reason = snapshot.reason if snapshot is not None else None
        shown = {d.index for d in snapshot.devices} if snapshot and available else set()
        replay = snapshot is not None and snapshot.backend == "replay"
        for index, panel in self._panels.items():
            panel.display = index in shown
            if index in shown:
                # Never pass a recording off as this machine's GPU.
                panel.border_subtitle = "replayed recording" if replay else ""
                panel.draw()
