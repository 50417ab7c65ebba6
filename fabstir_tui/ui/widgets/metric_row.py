"""One metric on one line: label, current value and its history as bars on an absolute scale."""

from __future__ import annotations

from collections.abc import Sequence

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

BARS = " ▁▂▃▄▅▆▇█"
LABEL_WIDTH = 6
VALUE_WIDTH = 16


def bar_levels(samples: Sequence[float | None], maximum: float) -> list[int]:
    """Each sample as 0..8 eighths of `maximum`: a missing reading is blank, a zero reading a
    muted floor (see `_style_for`), and any reading above zero at least one eighth."""
    levels: list[int] = []
    for sample in samples:
        if sample is None or maximum <= 0:
            levels.append(0)
            continue
        if sample <= 0:
            levels.append(1)
            continue
        eighths = int(min(1.0, sample / maximum) * 8 + 0.999)
        levels.append(max(1, min(8, eighths)))
    return levels


class MetricRow(Widget):
    """A leaf that repaints only when its value or history changes.

    Unlike Textual's Sparkline (scaled to the data's own min and max) the bars are drawn on an
    absolute scale, so an idle GPU looks idle and a flat 100 % looks full, as in nvitop.
    """

    DEFAULT_CSS = """
    MetricRow {
        height: 1;
    }
    """

    value_text: reactive[str] = reactive("")
    samples: reactive[tuple[float | None, ...]] = reactive(tuple)
    maximum: reactive[float] = reactive(100.0)

    def __init__(
        self,
        label: str,
        *,
        warm_at: float | None = None,
        hot_at: float | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.label = label
        self.warm_at = warm_at
        self.hot_at = hot_at

    def _style_for(self, sample: float | None) -> str:
        if sample is None or sample <= 0:
            return "$text-muted"
        if self.hot_at is not None and sample >= self.hot_at:
            return "$gpu-hot"
        if self.warm_at is not None and sample >= self.warm_at:
            return "$gpu-warm"
        return "$gpu-bar"

    def render(self) -> Content:
        width = self.size.width
        head = Content.assemble(
            (f"{self.label:<{LABEL_WIDTH}}", "$text-muted"),
            (f"{self.value_text:>{VALUE_WIDTH}} ", "bold"),
        )
        room = max(0, width - head.cell_length)
        shown = list(self.samples[-room:]) if room else []
        pad = room - len(shown)
        parts: list[tuple[str, str]] = [(" " * pad, "")] if pad else []
        for sample, level in zip(shown, bar_levels(shown, self.maximum), strict=True):
            char, style = BARS[level], self._style_for(sample)
            if parts and parts[-1][1] == style:
                parts[-1] = (parts[-1][0] + char, style)
            else:
                parts.append((char, style))
        return head + Content.assemble(*parts)
