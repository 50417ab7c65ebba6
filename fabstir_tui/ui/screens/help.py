"""The `?` screen: every key, read from the bindings themselves so it never goes stale."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


@dataclass(frozen=True, slots=True)
class KeyRow:
    key: str
    description: str
    where: str


class HelpScreen(ModalScreen[None]):
    """A dialog over the current screen; any of escape, ? or q closes it."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close", show=False),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, rows: list[KeyRow]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog", classes="dialog"):
            yield Label("Keys", classes="dialog-title")
            table: DataTable[Text] = DataTable(
                id="help-keys", cursor_type="row", zebra_stripes=True
            )
            table.add_column("key", width=8, key="key")
            table.add_column("action", width=34, key="action")
            table.add_column("where", width=10, key="where")
            for row in self.rows:
                table.add_row(Text(row.key), Text(row.description), Text(row.where))
            yield table
            yield Label("escape closes · ctrl+p runs any action by name", classes="muted")
