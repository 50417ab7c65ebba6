"""Peers (key 3): every peer the node knows, its ping, models and prices; filter, detail,
connect and disconnect (both operator commands on the Node, audited there)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import var
from textual.widgets import DataTable, Footer, Input, Label
from textual.widgets.data_table import CellDoesNotExist

from fabstir_tui.engine import events as ev
from fabstir_tui.engine.node import Node, NodeSnapshot
from fabstir_tui.engine.node_peers import PeerCommandError
from fabstir_tui.ui import messages as msg
from fabstir_tui.ui.peer_format import matches, row_cells, short_addrs, short_peer
from fabstir_tui.ui.screens.base import LiveScreen
from fabstir_tui.ui.screens.peer_dialogs import (
    ConnectPeerScreen,
    DisconnectPeerScreen,
    PeerDetailScreen,
)
from fabstir_tui.ui.styling import DIM
from fabstir_tui.ui.widgets.status_header import StatusHeader

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("peer", "peer", 10),
    ("address", "addr", 18),
    ("dir", "dir", 3),
    ("ping", "ping", 7),
    ("models", "models", 16),
    ("price", "price", 9),
    ("gpu", "gpu", 10),
    ("version", "version", 8),
    ("seen", "seen", 7),
)


class PeersScreen(LiveScreen):
    """Draws the peer book from PeersChanged (a header event, so every screen counts peers)."""

    FEED_EVENTS: ClassVar[tuple[type[ev.Event], ...]] = ()
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("enter", "detail", "Detail"),
        Binding("c", "connect", "Connect"),
        Binding("d", "disconnect", "Disconnect"),
    ]

    peers: var[tuple[ev.PeerView, ...]] = var(tuple)
    text_filter: var[str] = var("")

    def __init__(self, node: Node, *, id: str | None = None) -> None:
        super().__init__(node, id=id)
        self._shown: list[str] = []

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        yield Label("", id="peers-self", markup=False)
        yield Input(placeholder="/ filter: peer, address, model", id="peers-filter", compact=True)
        table: DataTable[Text] = DataTable(id="peers-table", cursor_type="row", zebra_stripes=True)
        for label, key, width in COLUMNS:
            table.add_column(label, width=width, key=key)
        yield table
        yield Footer(compact=True)

    @property
    def table(self) -> DataTable[Text]:
        return self.query_one("#peers-table", DataTable)

    def live_mount(self, snapshot: NodeSnapshot) -> None:
        self.peers = self.node.peers()
        self.table.focus()
        self.redraw()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.redraw()

    def on_engine_peers_changed(self, message: msg.PeersChanged) -> None:
        super().on_engine_peers_changed(message)
        self.peers = message.event.peers
        if self.is_current:
            self.redraw()

    # --- drawing --------------------------------------------------------------------------

    def shown_peers(self) -> list[ev.PeerView]:
        return [p for p in self.peers if matches(p, self.text_filter)]

    def redraw(self) -> None:
        """Rebuild the rows (a few per second at most), keeping the selected peer selected."""
        self._draw_self()
        table = self.table
        keep = self.selected_peer_id()
        table.clear()
        shown = self.shown_peers()
        for peer in shown:
            style = "" if peer.connected else DIM
            table.add_row(*(Text(c, style=style) for c in row_cells(peer)), key=peer.peer_id)
        self._shown = [p.peer_id for p in shown]
        if keep in self._shown:
            table.move_cursor(row=self._shown.index(keep))

    def _draw_self(self) -> None:
        status = self.node.p2p_status()
        if status is None:
            text = "P2P is off" if not self.node.config.p2p.enabled else "P2P is not running"
        else:
            text = f"us {short_peer(status.peer_id)} {short_addrs(status.listen_addrs)}"
            count = sum(1 for p in self.peers if p.connected)
            text += f" · {count} up, {len(self.peers) - count} gone · "
            reachable = self.node.p2p_reachable()
            text += "reachable (dialled in)" if reachable else "reach unknown (none dialled in)"
        self.query_one("#peers-self", Label).update(text + " ")

    # --- selection and keys ---------------------------------------------------------------

    def selected_peer_id(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        try:
            row_key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return str(row_key.value) if row_key.value is not None else None

    def selected_peer(self) -> ev.PeerView | None:
        peer_id = self.selected_peer_id()
        return next((p for p in self.peers if p.peer_id == peer_id), None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_detail()

    def action_detail(self) -> None:
        peer = self.selected_peer()
        if peer is None:
            self.notify("No peer selected.", markup=False)
            return
        self.app.push_screen(PeerDetailScreen(peer))

    def action_focus_filter(self) -> None:
        self.query_one("#peers-filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#peers-filter", Input).value = ""
        self.table.focus()

    @on(Input.Changed, "#peers-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.text_filter = event.value
        self.redraw()

    @on(Input.Submitted, "#peers-filter")
    def filter_submitted(self, event: Input.Submitted) -> None:
        self.table.focus()

    def action_connect(self) -> None:
        self.app.push_screen(ConnectPeerScreen(), callback=self._connect_answered)

    def _connect_answered(self, addr: str | None) -> None:
        if addr:
            self.run_worker(self._connect(addr), group="operator", exit_on_error=False)

    async def _connect(self, addr: str) -> None:
        try:
            peer_id = await self.node.connect_peer(addr)
        except PeerCommandError as exc:
            self.notify(str(exc), title="Not connected", severity="error", markup=False)
            return
        self.notify(f"Connected to {peer_id}", title="Peers", markup=False)

    def action_disconnect(self) -> None:
        peer = self.selected_peer()
        if peer is None:
            self.notify("No peer selected.", markup=False)
            return
        if not peer.connected:
            self.notify(f"{short_peer(peer.peer_id)} is not connected.", markup=False)
            return
        self.app.push_screen(
            DisconnectPeerScreen(peer),
            callback=lambda yes: self._disconnect_answered(peer.peer_id, yes),
        )

    def _disconnect_answered(self, peer_id: str, yes: bool | None) -> None:
        if yes:
            self.run_worker(self._disconnect(peer_id), group="operator", exit_on_error=False)

    async def _disconnect(self, peer_id: str) -> None:
        try:
            await self.node.disconnect_peer(peer_id)
        except PeerCommandError as exc:
            self.notify(str(exc), title="Not disconnected", severity="error", markup=False)
            return
        self.notify(f"Disconnected {short_peer(peer_id)}", title="Peers", markup=False)
