"""Host load beside the GPU: CPU, RAM and the free disk that models and the store live on."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from fabstir_tui.engine.events import HostSnapshot
from fabstir_tui.ui import format as fmt

BAR_WIDTH = 12
EIGHTHS = " ▏▎▍▌▋▊▉█"


def meter(fraction: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar in eighths of a cell, always `width` cells wide."""
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    bar = "█" * full + (EIGHTHS[rest] if rest else "")
    return bar.ljust(width)


class HostPanel(Widget):
    """A leaf redrawn only when a new reading differs from the one shown."""

    DEFAULT_CLASSES = "panel"
    DEFAULT_CSS = """
    HostPanel {
        height: auto;
    }
    """

    snapshot: reactive[HostSnapshot | None] = reactive(None)

    def on_mount(self) -> None:
        self.border_title = "Host"

    def render(self) -> Content:
        host = self.snapshot
        if host is None:
            return Content.styled("Waiting for the first host reading…", "$text-muted")
        ram = host.ram_used_bytes / host.ram_total_bytes if host.ram_total_bytes else 0.0
        disk_used = (
            1.0 - host.disk_free_bytes / host.disk_total_bytes if host.disk_total_bytes else 0.0
        )
        return Content.assemble(
            ("CPU  ", "$text-muted"),
            (meter(host.cpu_pct / 100.0), "$host-bar"),
            (f" {host.cpu_pct:3.0f}% of {host.cpu_count}\n", "bold"),
            ("load ", "$text-muted"),
            (f"{host.load_avg_1m:.2f} (1 min)\n", ""),
            ("RAM  ", "$text-muted"),
            (meter(ram), "$host-bar"),
            (f" {fmt.gib(host.ram_used_bytes)}/{fmt.gib(host.ram_total_bytes)} GiB\n", "bold"),
            ("disk ", "$text-muted"),
            (meter(disk_used), "$host-bar"),
            (f" {fmt.size_bytes(host.disk_free_bytes)} free", "bold"),
        )
