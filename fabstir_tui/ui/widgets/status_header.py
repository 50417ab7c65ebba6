"""The one-line header every screen shares: node, model, GPU and host at a glance.

Segments are laid out left to right and the longest ones are shortened first, so the line fits
80 columns and later segments (chain and block, peers, jobs running, earnings) slot in without
reshuffling the rest. Nothing is shown for parts of the node that do not exist yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

SEPARATOR = " │ "
MIN_SEGMENT = 8

_STATE_STYLE = {
    "running": "$success",
    "starting": "$warning",
    "stopping": "$warning",
    "stopped": "$error",
}


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    style: str = ""
    lead: str = ""
    lead_style: str = ""

    @property
    def width(self) -> int:
        return len(self.lead) + len(self.text)


def fit(segments: list[Segment], width: int) -> list[Segment]:
    """Shorten the longest segments (never below MIN_SEGMENT cells) until the line fits."""
    fitted = list(segments)
    overflow = sum(s.width for s in fitted) + len(SEPARATOR) * (len(fitted) - 1) - width
    while overflow > 0:
        index = max(range(len(fitted)), key=lambda i: fitted[i].width)
        seg = fitted[index]
        room = seg.width - MIN_SEGMENT
        if room <= 0:
            break
        cut = min(room, overflow)
        keep = max(1, len(seg.text) - cut - 1)
        fitted[index] = Segment(seg.text[:keep] + "…", seg.style, seg.lead, seg.lead_style)
        overflow -= seg.width - fitted[index].width
    return fitted


class StatusHeader(Widget):
    """A leaf; the screen sets plain strings, so an unchanged reading never repaints."""

    DEFAULT_CSS = """
    StatusHeader {
        height: 1;
        width: 1fr;
    }
    """

    node_name: reactive[str] = reactive("")
    node_state: reactive[str] = reactive("stopped")
    read_only: reactive[bool] = reactive(False)
    model_text: reactive[str] = reactive("no model loaded")
    gpu_text: reactive[str] = reactive("GPU …")
    host_text: reactive[str] = reactive("")

    def segments(self) -> list[Segment]:
        """The segments in display order; later node parts add theirs here."""
        state_style = _STATE_STYLE.get(self.node_state, "")
        name = self.node_name + (" [read-only]" if self.read_only else "")
        segments = [
            Segment(f"{name} {self.node_state}", "bold", "● ", state_style),
            Segment(self.model_text),
            Segment(self.gpu_text),
        ]
        if self.host_text:
            segments.append(Segment(self.host_text))
        return segments

    def render(self) -> Content:
        parts: list[Content] = []
        for segment in fit(self.segments(), self.size.width):
            parts.append(
                Content.assemble((segment.lead, segment.lead_style), (segment.text, segment.style))
            )
        return Content.styled(SEPARATOR, "$text-muted").join(parts)
