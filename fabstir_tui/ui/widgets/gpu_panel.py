"""One GPU: utilisation, memory, power and temperature with their recent history."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from fabstir_tui.engine.events import GpuDevice
from fabstir_tui.ui import format as fmt
from fabstir_tui.ui.widgets.metric_row import MetricRow

TEMP_SCALE_C = 100.0
TEMP_WARM_C = 75.0
TEMP_HOT_C = 85.0


def _reading_errors(device: GpuDevice) -> dict[str, str]:
    return dict(device.errors)


def _memory(device: GpuDevice) -> str:
    used, total = device.memory_used_bytes, device.memory_total_bytes
    if used is None or total is None:
        return fmt.DASH
    return f"{fmt.gib(used)}/{fmt.gib(total)} GiB"


def _power(device: GpuDevice) -> str:
    if device.power_w is None:
        return fmt.DASH
    if device.power_limit_w:
        return f"{device.power_w:.0f}/{device.power_limit_w:.0f} W"
    return f"{device.power_w:.0f} W"


def _temperature(device: GpuDevice) -> str:
    return fmt.DASH if device.temperature_c is None else f"{device.temperature_c:.0f}°C"


def _details(device: GpuDevice) -> str:
    """The slower-moving facts; a field NVML could not read says so instead of showing 0."""
    errors = _reading_errors(device)
    parts = []
    if device.sm_clock_mhz is not None:
        parts.append(f"SM {device.sm_clock_mhz} MHz")
    if device.fan_pct is not None:
        parts.append(f"fan {device.fan_pct:.0f}%")
    elif "fan_pct" in errors:
        parts.append("fan n/a")
    if device.processes is not None:
        noun = "process" if device.processes == 1 else "processes"
        parts.append(f"{device.processes} {noun}")
    return " · ".join(parts)


class GpuPanel(Vertical):
    """A container of leaf rows; it keeps the device's history so the rows only redraw."""

    DEFAULT_CLASSES = "panel"

    def __init__(self, index: int, history_len: int, seed: Iterable[GpuDevice] = ()) -> None:
        super().__init__(id=f"gpu-{index}")
        self.index = index
        self._history: deque[GpuDevice] = deque(seed, maxlen=history_len)
        self._details = ""
        self._ready = False

    def compose(self) -> ComposeResult:
        yield MetricRow("util", id="gpu-util")
        yield MetricRow("mem", id="gpu-mem")
        yield MetricRow("power", id="gpu-power")
        yield MetricRow("temp", warm_at=TEMP_WARM_C, hot_at=TEMP_HOT_C, id="gpu-temp")
        yield Static("", id="gpu-details", classes="muted", markup=False)

    @property
    def samples(self) -> int:
        return len(self._history)

    def on_mount(self) -> None:
        self._ready = True
        self.draw()

    def record(self, device: GpuDevice) -> None:
        """Keep a reading; drawing waits for `draw`, so a hidden screen only records."""
        self._history.append(device)

    def draw(self) -> None:
        """Show the newest reading and the history; leaf rows repaint only if they changed."""
        if not self._ready or not self._history:
            return
        history = list(self._history)
        device = history[-1]
        self.border_title = f"GPU{device.index} {device.name}"
        util = self.query_one("#gpu-util", MetricRow)
        util.value_text = fmt.percent(device.utilisation_pct)
        util.samples = tuple(d.utilisation_pct for d in history)

        mem = self.query_one("#gpu-mem", MetricRow)
        total = float(device.memory_total_bytes or 0)
        mem.warm_at, mem.hot_at = 0.90 * total, 0.97 * total
        mem.maximum = total or 1.0
        mem.value_text = _memory(device)
        mem.samples = tuple(
            None if d.memory_used_bytes is None else float(d.memory_used_bytes) for d in history
        )

        power = self.query_one("#gpu-power", MetricRow)
        limit = device.power_limit_w or max((d.power_w or 0.0) for d in history) or 1.0
        power.warm_at, power.hot_at = 0.95 * limit, 1.0 * limit
        power.maximum = limit
        power.value_text = _power(device)
        power.samples = tuple(d.power_w for d in history)

        temp = self.query_one("#gpu-temp", MetricRow)
        temp.maximum = TEMP_SCALE_C
        temp.value_text = _temperature(device)
        temp.samples = tuple(d.temperature_c for d in history)

        details = _details(device)
        if details != self._details:
            self._details = details
            self.query_one("#gpu-details", Static).update(details)
