"""One metric: label, current value and its history as bars on an absolute scale.

The row grows with the space it is given (one line at 80x24 with several GPUs, a taller graph
on a big terminal), like btop's and nvitop's graphs.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

BARS = " ▁▂▃▄▅▆▇█"
LABEL_WIDTH = 6
VALUE_WIDTH = 16


def bar_levels(samples: Sequence[float | None], maximum: float, rows: int = 1) -> list[int]:
    """Each sample in eighths of a cell over `rows` lines (0..8*rows) of `maximum`.

    A missing reading is blank; a zero reading is a floor of one eighth (drawn muted), and any
    reading above zero is at least one eighth, so "idle" and "no data" never look alike.
    """
    top = 8 * rows
    levels: list[int] = []
    for sample in samples:
        if sample is None or maximum <= 0:
            levels.append(0)
        elif sample <= 0:
            levels.append(1)
        else:
            eighths = int(min(1.0, sample / maximum) * top + 0.999)
            levels.append(max(1, min(top, eighths)))
    return levels


def bar_cell(level: int, row_from_bottom: int) -> str:
    """The character a column of height `level` eighths shows on one line of the graph."""
    return BARS[max(0, min(8, level - 8 * row_from_bottom))]


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
        width, height = self.size.width, max(1, self.size.height)
        head = Content.assemble(
            (f"{self.label:<{LABEL_WIDTH}}", "$text-muted"),
            (f"{self.value_text:>{VALUE_WIDTH}} ", "bold"),
        )
        blank = Content(" " * head.cell_length)
        room = max(0, width - head.cell_length)
        shown = list(self.samples[-room:]) if room else []
        levels = bar_levels(shown, self.maximum, height)
        styles = [self._style_for(sample) for sample in shown]
        pad = " " * (room - len(shown))
        lines: list[Content] = []
        for line in range(height):
            from_bottom = height - 1 - line
            parts: list[tuple[str, str]] = [(pad, "")] if pad else []
            for level, style in zip(levels, styles, strict=True):
                char = bar_cell(level, from_bottom)
                if parts and parts[-1][1] == style:
                    parts[-1] = (parts[-1][0] + char, style)
                else:
                    parts.append((char, style))
            lines.append((head if line == 0 else blank) + Content.assemble(*parts))
        return Content("\n").join(lines)
