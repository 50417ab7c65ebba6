"""What the GPU area says when there is no GPU to show, with the reason the engine gave."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

WAITING = "Waiting for the first GPU reading…"


class NoGpuPanel(Widget):
    """A leaf: names the cause (no driver, replay ended, telemetry off) instead of zeros."""

    DEFAULT_CLASSES = "panel"
    DEFAULT_CSS = """
    NoGpuPanel {
        height: auto;
    }
    """

    reason: reactive[str | None] = reactive(None, layout=True)
    waiting: reactive[bool] = reactive(True, layout=True)

    def on_mount(self) -> None:
        self.border_title = "GPU"

    def render(self) -> Content:
        if self.waiting:
            return Content.styled(WAITING, "$text-muted")
        return Content.assemble(
            ("No GPU in use — inference runs on the CPU.", "bold $warning"),
            "\n",
            (self.reason or "The engine gave no reason.", "$text-muted"),
        )
