"""Proofs (key 6): per job, the signed receipt's hash, the Merkle root submitted on-chain, the
transactions that carried them, the payment, and `v` to re-run the job against its receipt.
What it shows is economic security (a challenge window), not a zero-knowledge proof."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.notifications import SeverityLevel
from textual.reactive import var
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, Static
from textual.widgets.data_table import CellDoesNotExist

from fabstir_tui.engine import events as ev
from fabstir_tui.engine.jobs.proof_views import ProofView
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.views import JobCommandError, JobsChanged
from fabstir_tui.engine.node import Node, NodeSnapshot
from fabstir_tui.ui import messages as msg
from fabstir_tui.ui.job_format import TokenUnits, token_units, units_for
from fabstir_tui.ui.proof_format import (
    NATURE_LINE,
    PROOF_COLUMNS,
    proof_cells,
    proof_detail_lines,
    verify_lines,
)
from fabstir_tui.ui.screens.base import LiveScreen
from fabstir_tui.ui.styling import theme_style
from fabstir_tui.ui.widgets.status_header import StatusHeader

_RIGHT = frozenset({"tokens", "paid"})
_EMPTY_HINT = (
    "No receipts yet: a job this node runs signs one, and its Merkle root is submitted "
    "with the result (claim jobs on 2 Jobs). Then v re-runs the selected job, enter shows it."
)

_DETAIL_CSS = """
ProofDetailScreen {
    align: center middle;
}
#proof-detail {
    width: 78;
    max-width: 100%;
    height: auto;
    max-height: 100%;
    border: thick $primary;
    background: $surface;
    padding: 0 1;
}
#proof-detail-body {
    height: auto;
    max-height: 20;
}
"""


class ProofDetailScreen(ModalScreen[None]):
    """One job's full hashes, signer, transactions and its last verify report; `v` verifies it
    from here too. The Proofs screen hands it each newer view (`show`)."""

    DEFAULT_CSS = _DETAIL_CSS
    BINDINGS = [
        Binding("escape", "dismiss", "Close", show=False),
        Binding("enter", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
        Binding("v", "verify", "Verify", show=False),
    ]

    def __init__(self, owner: ProofsScreen, view: ProofView, units: TokenUnits) -> None:
        super().__init__()
        self.owner = owner
        self.view = view
        self.units = units

    @property
    def job_key(self) -> JobKey:
        return self.view.key

    def compose(self) -> ComposeResult:
        with Vertical(id="proof-detail"):
            yield Label("", id="proof-detail-title", classes="dialog-title", markup=False)
            with VerticalScroll(id="proof-detail-body"):
                yield Static("", id="proof-detail-fields", markup=False)
                yield Static("", id="proof-detail-verify", markup=False)
            yield Label("v verifies · escape closes", classes="muted")

    def on_mount(self) -> None:
        self.show(self.view)

    def show(self, view: ProofView) -> None:
        """Draw `view` (a newer picture of the same job)."""
        self.view = view
        self.query_one("#proof-detail-title", Label).update(
            f"Job {view.job_id} · receipt, root and transactions"
        )
        fields = "\n".join(proof_detail_lines(view, self.units))
        self.query_one("#proof-detail-fields", Static).update(fields)
        report = "\n".join(["", "verify", *verify_lines(view)])
        self.query_one("#proof-detail-verify", Static).update(report)

    def action_verify(self) -> None:
        self.owner.start_verify(self.view)


class ProofsScreen(LiveScreen):
    """Draws node.proofs() on each JobsChanged; verify runs in a worker, its verdict kept by
    the engine for the session."""

    FEED_EVENTS: ClassVar[tuple[type[ev.Event], ...]] = (JobsChanged,)
    DEFAULT_CSS = """
    ProofsScreen #proofs-nature, ProofsScreen #proofs-hint {
        height: auto;
        padding: 0 1;
    }
    ProofsScreen #proofs-hint {
        color: $text-muted;
    }
    ProofsScreen #proofs-table {
        height: 1fr;
    }
    """
    BINDINGS = [
        Binding("v", "verify", "Verify", tooltip="Re-run the selected job against its receipt"),
        Binding("enter", "detail", "Detail"),
    ]

    proofs: var[tuple[ProofView, ...]] = var(tuple)

    def __init__(self, node: Node, *, id: str | None = None) -> None:
        super().__init__(node, id=id)
        self._units: dict[str, TokenUnits] = {}
        self._drawn: dict[str, list[Text]] = {}
        self._asked: set[JobKey] = set()  # verifies this screen started and not yet answered

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        yield Static(NATURE_LINE, id="proofs-nature", classes="section-title", markup=False)
        yield Static(_EMPTY_HINT, id="proofs-hint", markup=False)
        table: DataTable[Text] = DataTable(id="proofs-table", cursor_type="row", zebra_stripes=True)
        for label, key, width in PROOF_COLUMNS:
            table.add_column(label, width=width, key=key)
        yield table
        yield Footer(compact=True)

    @property
    def table(self) -> DataTable[Text]:
        return self.query_one("#proofs-table", DataTable)

    def live_mount(self, snapshot: NodeSnapshot) -> None:
        self._units = token_units(snapshot.chain)
        self.reload()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.reload()

    def on_engine_chain_status(self, message: msg.ChainStatus) -> None:
        super().on_engine_chain_status(message)
        self._units = token_units(message.event)

    def on_engine_jobs_changed(self, message: msg.JobsChanged) -> None:
        super().on_engine_jobs_changed(message)
        if self.is_current or isinstance(self.app.screen, ProofDetailScreen):
            self.reload()

    # --- drawing --------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the node's proof views and draw them (the detail pane too, when open)."""
        self.proofs = tuple(self.node.proofs())
        self.redraw()
        detail = self.app.screen
        if isinstance(detail, ProofDetailScreen):
            view = self.find(detail.job_key)
            if view is not None:
                detail.show(self._shown(view))

    def _shown(self, view: ProofView) -> ProofView:
        """The engine marks a verify once it has started; until then this screen does."""
        if view.key in self._asked and view.verify_status is None:
            return replace(view, verify_status="verifying")
        return view

    def unit(self, view: ProofView) -> TokenUnits:
        return units_for(view.token, self._units)

    def redraw(self) -> None:
        table = self.table
        rows: dict[str, list[Text]] = {}
        for view in self.proofs:
            shown = self._shown(view)
            bad = shown.verify_status == "mismatch"
            style = theme_style(self.app, "error", bold=True) if bad else ""
            rows[str(view.key)] = [
                Text(cell, style=style, justify="right" if key in _RIGHT else "left")
                for cell, (_, key, _) in zip(
                    proof_cells(shown, self.unit(view)), PROOF_COLUMNS, strict=True
                )
            ]
        with self.app.batch_update():
            if list(rows) == list(self._drawn) and table.row_count == len(rows):
                for row_key, texts in rows.items():
                    old = self._drawn[row_key]
                    for (_, column, _), new, before in zip(PROOF_COLUMNS, texts, old, strict=True):
                        if (new.plain, new.style) != (before.plain, before.style):
                            table.update_cell(row_key, column, new)
            else:
                keep = self._cursor_key()
                table.clear()
                for row_key, texts in rows.items():
                    table.add_row(*texts, key=row_key)
                if keep in rows:
                    table.move_cursor(row=list(rows).index(keep))
            self._drawn = rows
            table.display = bool(rows)
            self.query_one("#proofs-hint", Static).display = not rows

    # --- selection ------------------------------------------------------------------------

    def _cursor_key(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        try:
            row_key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return str(row_key.value) if row_key.value is not None else None

    def find(self, key: JobKey) -> ProofView | None:
        return next((v for v in self.proofs if v.key == key), None)

    def selected_view(self) -> ProofView | None:
        wanted = self._cursor_key()
        return next((v for v in self.proofs if str(v.key) == wanted), None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_detail()

    def action_detail(self) -> None:
        view = self.selected_view()
        if view is None:
            self.notify("No job selected: nothing has a receipt yet.", markup=False)
            return
        self.app.push_screen(ProofDetailScreen(self, self._shown(view), self.unit(view)))

    # --- verify ---------------------------------------------------------------------------

    def action_verify(self) -> None:
        view = self.selected_view()
        if view is None:
            self.notify("Select a job to verify.", markup=False)
            return
        self.start_verify(view)

    def start_verify(self, view: ProofView) -> None:
        """Re-run the job in a worker; "verifying…" until the report or the refusal comes."""
        if view.key in self._asked or view.verify_status == "verifying":
            self.notify(f"Job {view.job_id} is already being verified.", markup=False)
            return
        self._asked.add(view.key)
        self.reload()
        self.run_worker(
            self._verify(view.key),
            name=f"verify job {view.job_id}",
            group="verify",
            exit_on_error=False,
        )

    async def _verify(self, key: JobKey) -> None:
        title = f"Job {key.job_id}"
        try:
            report = await self.node.verify_job(key)
        except JobCommandError as exc:
            self.notify(str(exc), title=f"{title} not verified", severity="warning", markup=False)
            return
        finally:
            self._asked.discard(key)
            if self.is_mounted:
                self.reload()
        severity: SeverityLevel = "warning"
        if report.verdict != "error":
            severity = "information" if report.verdict == "match" else "error"
        line = report.lines()[0]
        self.notify(line, title=f"{title} verified", severity=severity, markup=False)
