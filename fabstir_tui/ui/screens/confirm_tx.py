"""The signing dialog: exactly what will be signed (contract, function, arguments, money)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from fabstir_tui.engine.chain.actions import TxNote
from fabstir_tui.engine.chain.txtypes import TxPreview
from fabstir_tui.ui.format import gwei, token_amount


def preview_lines(preview: TxPreview, notes: tuple[TxNote, ...] = ()) -> list[tuple[str, str]]:
    """(label, value) rows in reading order; amounts exact, fees in ETH and gwei."""
    rows = [(n.label, _note(n)) for n in notes]
    rows += [
        ("contract", f"{preview.contract or '(unknown)'} {preview.address}"),
        ("function", preview.function or "(plain transfer)"),
    ]
    rows += [(f"  {a.name}", f"{a.display}  ({a.type})") for a in preview.args]
    rows += [
        ("value", token_amount(preview.value_wei, 18, "ETH")),
        ("gas estimate", f"{preview.gas_estimate:,} (limit {preview.gas_limit:,})"),
        (
            "max fee",
            f"{gwei(preview.max_fee_per_gas_wei)} per gas"
            + (" (capped by chain.max_fee_gwei)" if preview.fee_capped else ""),
        ),
        ("priority fee", f"{gwei(preview.priority_fee_wei)} per gas"),
    ]
    if preview.l1_fee_wei:
        rows.append(("L1 data fee", token_amount(preview.l1_fee_wei, 18, "ETH")))
    rows.append(("at most", token_amount(preview.total_max_cost_wei, 18, "ETH") + " in total"))
    rows.append(("from", preview.sender))
    rows.append(("chain id", str(preview.chain_id)))
    return rows


def _note(note: TxNote) -> str:
    if note.amount is None:
        return note.text
    amount = token_amount(note.amount, note.decimals, note.symbol)
    return f"{amount} {note.text}".rstrip()


class ConfirmTxScreen(ModalScreen[bool]):
    """Answers True to sign: y signs; n, escape or enter (Cancel has the focus) do not."""

    BINDINGS = [
        Binding("y", "answer(True)", "Sign", show=False),
        Binding("n", "answer(False)", "Cancel", show=False),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def __init__(self, title: str, preview: TxPreview, notes: tuple[TxNote, ...] = ()) -> None:
        super().__init__()
        self.title_text = title
        self.preview = preview
        self.notes = notes

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-tx", classes="dialog"):
            yield Label(f"Sign: {self.title_text}?", classes="dialog-title", markup=False)
            with VerticalScroll(id="confirm-rows"):
                for label, value in preview_lines(self.preview, self.notes):
                    with Horizontal(classes="confirm-row"):
                        yield Static(label, classes="confirm-label", markup=False)
                        yield Static(value, classes="confirm-value", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Sign and send (y)", variant="warning", id="confirm-yes")
                yield Button("Cancel (n)", variant="primary", id="confirm-no")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")

    def action_answer(self, sign: bool) -> None:
        self.dismiss(sign)
