"""The quit dialog: says what stopping will end (loaded models, a generation in flight)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


@dataclass(frozen=True, slots=True)
class RunningWork:
    """What the node is doing at the moment the operator asks to quit."""

    loaded: tuple[str, ...]
    generating: tuple[str, ...]

    def lines(self) -> list[str]:
        lines = []
        if self.generating:
            names = ", ".join(sorted(set(self.generating)))
            count = len(self.generating)
            noun = "generation" if count == 1 else "generations"
            lines.append(f"{count} {noun} in flight ({names}) will be cut off.")
        if self.loaded:
            noun = "model" if len(self.loaded) == 1 else "models"
            lines.append(
                f"{len(self.loaded)} loaded {noun} ({', '.join(self.loaded)}) will be unloaded."
            )
        if not lines:
            lines.append("Nothing is running: no model loaded, no generation in flight.")
        return lines

    def describe(self) -> str:
        """One line for the audit log."""
        return f"loaded={len(self.loaded)} generating={len(self.generating)}"


class QuitScreen(ModalScreen[bool]):
    """Answers True to quit: y quits; n, escape or enter (Stay has the focus) stay."""

    BINDINGS = [
        Binding("y", "answer(True)", "Quit", show=False),
        Binding("n", "answer(False)", "Stay", show=False),
        Binding("escape", "answer(False)", "Stay", show=False),
    ]

    def __init__(self, work: RunningWork) -> None:
        super().__init__()
        self.work = work

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog", classes="dialog"):
            yield Label("Quit fabstir-tui?", classes="dialog-title")
            yield Static("The node stops serving.", markup=False)
            for line in self.work.lines():
                yield Static(line, classes="quit-running", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Quit (y)", variant="error", id="quit-yes")
                yield Button("Stay (n)", variant="primary", id="quit-no")

    def on_mount(self) -> None:
        self.query_one("#quit-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "quit-yes")

    def action_answer(self, quit_: bool) -> None:
        self.dismiss(quit_)
