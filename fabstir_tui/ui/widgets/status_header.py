"""The one-line header every screen shares: node, model, GPU and host at a glance.

Segments are laid out left to right and the longest ones are shortened first, so the line fits
80 columns and later segments (chain and block, the API, peers, jobs running, earnings) slot in
without reshuffling the rest. Nothing is shown for parts of the node that do not exist yet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    "failed": "$error",
}


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    style: str = ""
    lead: str = ""
    lead_style: str = ""
    keep: bool = False  # shortened only when nothing else can give way (the node's state)

    @property
    def width(self) -> int:
        return len(self.lead) + len(self.text)


def fit(segments: list[Segment], width: int) -> list[Segment]:
    """Shorten the longest segment a cell at a time (never below MIN_SEGMENT) until it fits;
    `keep` segments give way only once every other segment is as short as it may be."""
    cut = [0] * len(segments)
    overflow = sum(s.width for s in segments) + len(SEPARATOR) * (len(segments) - 1) - width

    def room(i: int) -> int:
        return segments[i].width - cut[i] - MIN_SEGMENT

    for allowed in ([i for i, s in enumerate(segments) if not s.keep], list(range(len(segments)))):
        while overflow > 0 and allowed:
            index = max(allowed, key=lambda i: segments[i].width - cut[i])
            if room(index) <= 0:
                break
            cut[index] += 1
            overflow -= 1
    return [
        replace(s, text=s.text[: len(s.text) - n - 1] + "…") if n else s
        for s, n in zip(segments, cut, strict=True)
    ]


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
    chain_text: reactive[str] = reactive("")
    p2p_text: reactive[str] = reactive("")
    jobs_text: reactive[str] = reactive("")
    api_text: reactive[str] = reactive("")

    def segments(self) -> list[Segment]:
        """The segments in display order; later node parts add theirs here."""
        state_style = _STATE_STYLE.get(self.node_state, "")
        name = self.node_name + (" [read-only]" if self.read_only else "")
        segments = [
            Segment(f"{name} {self.node_state}", "bold", "● ", state_style, keep=True),
            Segment(self.model_text),
            Segment(self.gpu_text),
        ]
        if self.host_text:
            segments.append(Segment(self.host_text))
        if self.chain_text:
            segments.append(Segment(self.chain_text))
        if self.api_text:
            segments.append(Segment(self.api_text))
        if self.p2p_text:
            segments.append(Segment(self.p2p_text))
        if self.jobs_text:
            segments.append(Segment(self.jobs_text))
        return segments

    def render(self) -> Content:
        parts: list[Content] = []
        for segment in fit(self.segments(), self.size.width):
            parts.append(
                Content.assemble((segment.lead, segment.lead_style), (segment.text, segment.style))
            )
        return Content.styled(SEPARATOR, "$text-muted").join(parts)
