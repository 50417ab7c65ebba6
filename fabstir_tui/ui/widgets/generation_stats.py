"""The playground's figures line: live while tokens stream, then the engine's final numbers."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from fabstir_tui.ui import format as fmt


class GenerationStats(Widget):
    """A leaf: status, TTFT, tokens/s and token counts, each a reactive of its own."""

    DEFAULT_CSS = """
    GenerationStats {
        height: 1;
    }
    """

    status: reactive[str] = reactive("idle")
    ttft_s: reactive[float | None] = reactive(None)
    tokens_per_s: reactive[float | None] = reactive(None)
    completion_tokens: reactive[int] = reactive(0)
    prompt_tokens: reactive[int | None] = reactive(None)
    live: reactive[bool] = reactive(False)

    def render(self) -> Content:
        status_style = {
            "streaming": "bold $accent",
            "failed": "bold $error",
            "cancelled": "bold $warning",
        }.get(self.status.split(" ")[0], "bold")
        parts: list[tuple[str, str] | str] = [(self.status, status_style)]
        if self.status != "idle":
            suffix = " (live)" if self.live else ""
            parts += [
                ("  TTFT ", "$text-muted"),
                fmt.seconds(self.ttft_s),
                ("  ", ""),
                fmt.rate(self.tokens_per_s) + suffix,
                ("  tokens ", "$text-muted"),
                str(self.completion_tokens),
            ]
            if self.prompt_tokens is not None:
                parts += [("  prompt ", "$text-muted"), str(self.prompt_tokens)]
        return Content.assemble(*parts)
