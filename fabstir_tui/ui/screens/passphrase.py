"""The passphrase prompt: asks once, never echoes, and hands the text straight to the node."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class PassphraseScreen(ModalScreen[str | None]):
    """Answers the typed passphrase, or None when the operator cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, address: str, keystore: str) -> None:
        super().__init__()
        self.address = address
        self.keystore = keystore

    def compose(self) -> ComposeResult:
        with Vertical(id="passphrase-dialog", classes="dialog"):
            yield Label("Unlock the node key", classes="dialog-title")
            yield Static(f"key {self.address}\nkeystore {self.keystore}", markup=False)
            yield Static(
                "Decrypting takes a few seconds (scrypt). To skip this prompt, set "
                "FABSTIR_PASSPHRASE_FILE or store the passphrase in the OS keyring.",
                classes="dialog-hint",
                markup=False,
            )
            yield Input(password=True, placeholder="passphrase", id="passphrase-input")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Unlock", variant="primary", id="passphrase-ok")
                yield Button("Cancel", id="passphrase-cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._answer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "passphrase-ok":
            self._answer()
        else:
            self.dismiss(None)

    def _answer(self) -> None:
        field = self.query_one(Input)
        text, field.value = field.value, ""
        self.dismiss(text if text else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
