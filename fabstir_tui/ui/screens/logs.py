"""Logs (key 7): the engine log with level and text filters, and the operator audit trail."""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import var
from textual.theme import Theme
from textual.widgets import DataTable, Footer, Input, Label, RichLog

from fabstir_tui.engine import events as ev
from fabstir_tui.engine.node import Node, NodeSnapshot
from fabstir_tui.ui import format as fmt
from fabstir_tui.ui import messages as msg
from fabstir_tui.ui.screens.base import LiveScreen
from fabstir_tui.ui.styling import DIM, theme_style
from fabstir_tui.ui.widgets.status_header import StatusHeader

LEVELS: tuple[ev.LogLevel, ...] = ("debug", "info", "warning", "error")
LOG_LINES = 5000


def level_rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else 0


class LogsScreen(LiveScreen):
    """Owns the feed for log lines and audit lines; keeps its own buffer to refilter from."""

    FEED_EVENTS: ClassVar[tuple[type[ev.Event], ...]] = (
        ev.LogRecorded,
        ev.OperatorActionRecorded,
    )
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("v", "cycle_level", "Level"),
        Binding("escape", "clear_filter", "Clear filter"),
    ]

    min_level: var[ev.LogLevel] = var("info")
    text_filter: var[str] = var("")

    def __init__(self, node: Node, *, id: str | None = None) -> None:
        super().__init__(node, id=id)
        self.set_reactive(LogsScreen.min_level, node.config.node.log_level)  # --log-level
        self._lines: deque[ev.LogRecorded] = deque(maxlen=LOG_LINES)
        self._seeded: dict[int, ev.Event] = {}  # id -> event, held so ids stay unique
        self.audit_rows = 0

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        with Horizontal(id="log-bar"):
            yield Label("", id="log-level")
            yield Input(placeholder="/ filter text", id="log-filter", compact=True)
        yield RichLog(id="log", max_lines=LOG_LINES, wrap=False, markup=False, auto_scroll=True)
        yield Label("Operator actions (audit)", id="audit-title")
        audit: DataTable[Text] = DataTable(id="audit", cursor_type="row", zebra_stripes=True)
        audit.add_column("time", width=8, key="time")
        audit.add_column("action", width=17, key="action")
        audit.add_column("detail", width=30, key="detail")
        audit.add_column("outcome", width=40, key="outcome")
        yield audit
        yield Footer(compact=True)

    def live_mount(self, snapshot: NodeSnapshot) -> None:
        for line in self.node.recent_logs():
            self._seeded[id(line)] = line
            self._lines.append(line)
        for action in self.node.recent_audit():
            self._seeded[id(action)] = action
            self._add_audit(action)
        self._draw_level()
        self._rewrite()
        self.app.theme_changed_signal.subscribe(self, self._theme_changed)
        self.query_one("#log", RichLog).focus()

    # --- log lines ------------------------------------------------------------------------

    def shows(self, line: ev.LogRecorded) -> bool:
        """Whether a line passes the level and text filters now set."""
        if level_rank(line.level) < level_rank(self.min_level):
            return False
        needle = self.text_filter.casefold()
        return not needle or needle in line.message.casefold() or needle in line.source.casefold()

    def _render_line(self, line: ev.LogRecorded) -> Text:
        level_style = {
            "debug": DIM,
            "info": theme_style(self.app, "primary"),
            "warning": theme_style(self.app, "warning", bold=True),
            "error": theme_style(self.app, "error", bold=True),
        }[line.level]
        return Text.assemble(
            (fmt.clock(line.ts), DIM),
            " ",
            (f"{line.level.upper():<8}", level_style),
            (f"{line.source:<10} ", DIM),
            line.message,
        )

    def _rewrite(self) -> None:
        log = self.query_one("#log", RichLog)
        log.clear()
        for line in self._lines:
            if self.shows(line):
                log.write(self._render_line(line))

    def _draw_level(self) -> None:
        self.query_one("#log-level", Label).update(f"level ≥ {self.min_level} (v) ")

    def _theme_changed(self, theme: Theme) -> None:
        self._rewrite()

    def on_engine_log_recorded(self, message: msg.LogRecorded) -> None:
        line = message.event
        if self._seeded.get(id(line)) is line:
            return
        self._lines.append(line)
        if self.shows(line):
            self.query_one("#log", RichLog).write(self._render_line(line))

    # --- audit ----------------------------------------------------------------------------

    def _add_audit(self, action: ev.OperatorActionRecorded) -> None:
        table = self.query_one("#audit", DataTable)
        table.add_row(
            Text(fmt.clock(action.ts), style=DIM),
            Text(action.action),
            Text(action.detail),
            Text(action.outcome),
        )
        self.audit_rows += 1
        table.move_cursor(row=table.row_count - 1)

    def on_engine_operator_action_recorded(self, message: msg.OperatorActionRecorded) -> None:
        if self._seeded.get(id(message.event)) is not message.event:
            self._add_audit(message.event)

    # --- filters --------------------------------------------------------------------------

    def action_focus_filter(self) -> None:
        self.query_one("#log-filter", Input).focus()

    def action_cycle_level(self) -> None:
        self.min_level = LEVELS[(level_rank(self.min_level) + 1) % len(LEVELS)]
        self._draw_level()
        self._rewrite()

    def action_clear_filter(self) -> None:
        field = self.query_one("#log-filter", Input)
        field.value = ""
        self.query_one("#log", RichLog).focus()

    @on(Input.Changed, "#log-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.text_filter = event.value
        self._rewrite()
