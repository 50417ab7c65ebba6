"""Earnings (key 5): balances per token, escrow, earned today/7d/total, payments, gas, actions."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import var
from textual.widgets import DataTable, Footer, Static

from fabstir_tui.engine import events as ev
from fabstir_tui.engine.chain import events as cev
from fabstir_tui.engine.chain.actions import Unregister, Withdraw
from fabstir_tui.engine.chain.ledger import LedgerEntry
from fabstir_tui.engine.node import NodeSnapshot
from fabstir_tui.ui import messages as msg
from fabstir_tui.ui.format import DASH, gwei, short_hex, token_amount
from fabstir_tui.ui.screens.base import LiveScreen
from fabstir_tui.ui.widgets.status_header import StatusHeader

BALANCE_COLUMNS = (
    ("Token", "token", 6),
    ("Withdrawable", "withdrawable", 16),
    ("In escrow", "held", 16),
    ("Today", "today", 12),
    ("7 days", "week", 12),
    ("Total", "total", 14),
)
LEDGER_COLUMNS = (
    ("When", "when", 11),
    ("What", "what", 9),
    ("For", "for", 11),
    ("Amount", "amount", 18),
    ("Tx", "tx", 15),
)


def split_line(entry: LedgerEntry) -> str:
    """One payment's split as the contract made it, exact in the token's base units."""
    if entry.kind != "credit" or entry.charge is None:
        return ""
    return (
        f"{entry.reference}: charge {entry.charge} - fee {entry.fee} = paid {entry.amount}; "
        f"refunded {entry.refund} to the client (base units)"
    )


def status_lines(status: cev.ChainStatus | None) -> str:
    """Chain, key, registration and gas in three lines; every missing part says what to do."""
    if status is None or not status.enabled:
        return "No chain configured: set chain.rpc_urls, or run `fabstir-tui devnet`."
    block = DASH if status.block is None else f"#{status.block:,}"
    sync = "synced" if status.synced else f"syncing (applied #{status.applied_block or 0:,})"
    line1 = f"chain {status.chain_id}  block {block}  {sync}  via {status.url}"
    if status.connection:
        line1 += f" ({status.connection})"
    key = status.address or "no key"
    wallet = status.wallet + (f": {status.wallet_detail}" if status.wallet_detail else "")
    if status.registered:
        reg = f"registered, stake {token_amount(status.stake_wei, 18, 'ETH')}"
        reg += f", {len(status.models)} model(s)"
    else:
        reg = "not registered (g registers)"
    line2 = f"key {key} [{wallet}]  {reg}"
    eth = token_amount(status.eth_balance_wei, 18, "ETH")
    gas = f"gas {gwei(status.base_fee_wei)} base + {gwei(status.priority_fee_wei)} tip"
    line3 = f"{gas}  ETH for gas {eth}"
    if status.low_gas:
        line3 += "  ⚠ LOW: fund this key with ETH or transactions will fail"
    if status.read_only:
        line3 += "  [read-only: actions disabled]"
    if status.error:
        line3 += f"\n✗ {status.error}"
    return "\n".join((line1, line2, line3))


class EarningsScreen(LiveScreen):
    """Owns the feed for chain status and transactions; redraws on each status."""

    FEED_EVENTS: ClassVar[tuple[type[ev.Event], ...]] = ()

    BINDINGS = [
        Binding("w", "withdraw", "Withdraw"),
        Binding("g", "register", "Register", tooltip="Register or update the registration"),
        Binding("D", "unregister", "Unreg", tooltip="Unregister and take the stake back"),
        Binding("k", "unlock", "Unlock", tooltip="Unlock the node key (passphrase)"),
    ]

    status: var[cev.ChainStatus | None] = var(None)
    _entries: list[LedgerEntry] = []

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        yield Static("", id="earn-status", markup=False)
        balances: DataTable[Text] = DataTable(
            id="earn-balances", cursor_type="row", zebra_stripes=True
        )
        for label, key, width in BALANCE_COLUMNS:
            balances.add_column(label, width=width, key=key)
        yield balances
        yield Static("Payments and withdrawals (newest first)", classes="section-title")
        ledger: DataTable[Text] = DataTable(id="earn-ledger", cursor_type="row", zebra_stripes=True)
        for label, key, width in LEDGER_COLUMNS:
            ledger.add_column(label, width=width, key=key)
        yield ledger
        yield Static("", id="earn-split", markup=False)
        yield Footer(compact=True)

    def live_mount(self, snapshot: NodeSnapshot) -> None:
        self.status = snapshot.chain
        self.redraw()

    def on_engine_chain_status(self, message: msg.ChainStatus) -> None:
        super().on_engine_chain_status(message)
        self.status = message.event
        if self.is_current:
            self.redraw()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.redraw()

    def redraw(self) -> None:
        """Draw the status, the balances per token and the ledger rows."""
        self.query_one("#earn-status", Static).update(status_lines(self.status))
        balances = self.query_one("#earn-balances", DataTable)
        keep = balances.cursor_row
        balances.clear()
        for b in self.status.balances if self.status else ():
            waiting = f" ({b.jobs_awaiting_release} jobs)" if b.jobs_awaiting_release else ""
            balances.add_row(
                Text(b.symbol),
                Text(token_amount(b.withdrawable, b.decimals), justify="right"),
                Text(token_amount(b.held_in_escrow, b.decimals) + waiting, justify="right"),
                Text(token_amount(b.earned_today, b.decimals), justify="right"),
                Text(token_amount(b.earned_7d, b.decimals), justify="right"),
                Text(token_amount(b.earned_total, b.decimals), justify="right"),
                key=b.token,
            )
        if balances.row_count:
            balances.move_cursor(row=min(keep, balances.row_count - 1))
        self._draw_ledger()

    def _draw_ledger(self) -> None:
        table = self.query_one("#earn-ledger", DataTable)
        table.clear()
        units = (
            {b.token.lower(): (b.symbol, b.decimals) for b in self.status.balances}
            if (self.status)
            else {}
        )
        self._entries = self.node.earnings_entries()
        for entry in self._entries:
            symbol, decimals = units.get(entry.token.lower(), (short_hex(entry.token, 3), 18))
            sign = -1 if entry.kind == "withdraw" else 1
            table.add_row(
                Text(time.strftime("%m-%d %H:%M", time.localtime(entry.block_time))),
                Text("payment" if entry.kind == "credit" else "withdrawal"),
                Text(entry.reference or DASH),
                Text(token_amount(sign * entry.amount, decimals, symbol), justify="right"),
                Text(short_hex(entry.tx_hash, 6)),
            )
        self._draw_split()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "earn-ledger":
            self._draw_split()

    def _draw_split(self) -> None:
        """The highlighted payment's whole split in base units: what an operator reconciles."""
        table = self.query_one("#earn-ledger", DataTable)
        entries = self._entries
        line = ""
        if entries and 0 <= table.cursor_row < len(entries):
            line = split_line(entries[table.cursor_row])
        self.query_one("#earn-split", Static).update(line)

    # --- actions --------------------------------------------------------------------------

    def _selected_token(self) -> cev.TokenBalance | None:
        if self.status is None or not self.status.balances:
            return None
        row = self.query_one("#earn-balances", DataTable).cursor_row
        return self.status.balances[min(max(row, 0), len(self.status.balances) - 1)]

    def action_withdraw(self) -> None:
        balance = self._selected_token()
        if balance is None:
            self.notify("Nothing to withdraw: no chain status yet.", markup=False)
            return
        if balance.withdrawable == 0 and self.status is not None and not self.status.read_only:
            self.notify(f"No {balance.symbol} to withdraw.", markup=False)
            return
        self.run_worker(
            self.fabstir.run_chain_actions([Withdraw(balance.token)]),
            name="withdraw",
            exit_on_error=False,
        )

    def action_register(self) -> None:
        self.run_worker(
            self.fabstir.open_registration(self.status), name="register", exit_on_error=False
        )

    def action_unregister(self) -> None:
        self.run_worker(
            self.fabstir.run_chain_actions([Unregister()]), name="unregister", exit_on_error=False
        )

    def action_unlock(self) -> None:
        self.run_worker(self.fabstir.ask_passphrase(), name="unlock", exit_on_error=False)
