"""The Peers screen's dialogs: a peer's detail, connect to a multiaddr, confirm a disconnect."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from fabstir_tui.engine.events import PeerView
from fabstir_tui.ui.peer_format import detail_lines, short_peer


class PeerDetailScreen(ModalScreen[None]):
    """Every address, every model with id and price, capacity and GPU of one peer."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close", show=False),
        Binding("enter", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, peer: PeerView) -> None:
        super().__init__()
        self.peer = peer

    def compose(self) -> ComposeResult:
        with Vertical(id="peer-detail", classes="dialog"):
            yield Label(f"Peer {short_peer(self.peer.peer_id)}", classes="dialog-title")
            with VerticalScroll(id="peer-detail-body"):
                yield Static("\n".join(detail_lines(self.peer)), markup=False)
            yield Label("escape closes", classes="muted")


class ConnectPeerScreen(ModalScreen[str | None]):
    """Answers the multiaddr typed, or None when the operator cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    def compose(self) -> ComposeResult:
        with Vertical(id="peer-connect", classes="dialog"):
            yield Label("Connect to a peer", classes="dialog-title")
            yield Static(
                "Its full multiaddr, with /p2p/<peer id> (another node shows it in its log "
                "and on its Peers screen).",
                classes="dialog-hint",
                markup=False,
            )
            yield Input(placeholder="/ip4/1.2.3.4/tcp/4001/p2p/12D3KooW…", id="peer-addr")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Connect", variant="primary", id="peer-connect-ok")
                yield Button("Cancel", id="peer-connect-cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._answer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "peer-connect-ok":
            self._answer()
        else:
            self.dismiss(None)

    def _answer(self) -> None:
        text = self.query_one(Input).value.strip()
        self.dismiss(text or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DisconnectPeerScreen(ModalScreen[bool]):
    """Answers True to disconnect: y does; n, escape or enter (Keep has the focus) keep."""

    BINDINGS = [
        Binding("y", "answer(True)", "Disconnect", show=False),
        Binding("n", "answer(False)", "Keep", show=False),
        Binding("escape", "answer(False)", "Keep", show=False),
    ]

    def __init__(self, peer: PeerView) -> None:
        super().__init__()
        self.peer = peer

    def compose(self) -> ComposeResult:
        with Vertical(id="peer-disconnect", classes="dialog"):
            yield Label("Disconnect this peer?", classes="dialog-title")
            yield Static(self.peer.peer_id, markup=False)
            yield Static(
                "Its streams (jobs included) are cut; it may dial us again.",
                classes="dialog-hint",
                markup=False,
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Disconnect (y)", variant="error", id="peer-disconnect-yes")
                yield Button("Keep (n)", variant="primary", id="peer-disconnect-no")

    def on_mount(self) -> None:
        self.query_one("#peer-disconnect-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "peer-disconnect-yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
