"""Jobs (key 2): the market of open jobs we could claim, our queue, and what finished; claim,
accept and reject go through a quote or a confirm and end in Node commands (audited there)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar, Literal

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.events import DescendantFocus
from textual.reactive import var
from textual.widgets import DataTable, Footer, Static
from textual.widgets.data_table import CellDoesNotExist

from fabstir_tui.engine import events as ev
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobState
from fabstir_tui.engine.jobs.views import JobCommandError, JobsChanged, JobView
from fabstir_tui.engine.node import Node, NodeSnapshot
from fabstir_tui.ui import messages as msg
from fabstir_tui.ui.job_format import (
    DONE_COLUMNS,
    MARKET_COLUMNS,
    QUEUE_COLUMNS,
    TokenUnits,
    countdown,
    done_cells,
    find_view,
    market_cells,
    market_hint,
    queue_cells,
    queue_hint,
    summary_line,
    token_units,
    units_for,
)
from fabstir_tui.ui.screens.base import LiveScreen
from fabstir_tui.ui.screens.job_dialogs import JobDetailScreen, JobQuoteScreen, RejectJobScreen
from fabstir_tui.ui.styling import DIM, theme_style
from fabstir_tui.ui.widgets.status_header import StatusHeader

Table = Literal["market", "queue"]
Verb = Literal["Claim", "Accept", "Reject"]
_PAST = {"Claim": "claimed", "Accept": "accepted", "Reject": "rejected"}
_Cells = Callable[[JobView], tuple[str, ...]]
_RIGHT = frozenset({"max_tokens", "max_price", "escrow", "tokens", "rate", "price", "position"})


class JobsScreen(LiveScreen):
    """Draws the pipeline's JobsChanged pictures; deadlines count down once a second."""

    FEED_EVENTS: ClassVar[tuple[type[ev.Event], ...]] = (JobsChanged,)
    DEFAULT_CSS = """
    JobsScreen #jobs-summary, JobsScreen .jobs-hint {
        height: 1;
        padding: 0 1;
    }
    JobsScreen .jobs-hint {
        color: $text-muted;
    }
    JobsScreen #jobs-market, JobsScreen #jobs-queue {
        height: 1fr;
    }
    JobsScreen #jobs-done {
        height: auto;
        max-height: 5;
    }
    """
    BINDINGS = [
        Binding("c", "claim", "Claim", tooltip="Claim the open job under the cursor"),
        Binding("a", "accept", "Accept", tooltip="Accept work waiting for approval"),
        Binding("x", "reject", "Reject", tooltip="Reject an open job or waiting work"),
        Binding("enter", "detail", "Detail"),
        Binding("tab", "switch_table", "Market/Queue", show=False),
    ]

    jobs: var[JobsChanged] = var(JobsChanged)
    active: var[Table] = var[Table]("market")

    def __init__(self, node: Node, *, id: str | None = None) -> None:
        super().__init__(node, id=id)
        self._units: dict[str, TokenUnits] = {}
        # What each table shows, row key -> its texts: same rows in the same order means only
        # the cells that changed are updated (a running job's tokens), not a rebuild.
        self._drawn: dict[Table, dict[str, list[Text]]] = {"market": {}, "queue": {}}

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        yield Static("", id="jobs-summary", markup=False)
        yield Static("Market: open jobs we could claim (tab ⇄ queue)", classes="section-title")
        yield Static("", id="jobs-market-hint", classes="jobs-hint", markup=False)
        yield self._table("jobs-market", MARKET_COLUMNS)
        yield Static("Queue: our work", classes="section-title")
        yield Static("", id="jobs-queue-hint", classes="jobs-hint", markup=False)
        yield self._table("jobs-queue", QUEUE_COLUMNS)
        yield Static("", id="jobs-done-title", classes="section-title", markup=False)
        done = self._table("jobs-done", DONE_COLUMNS)
        done.can_focus = False
        yield done
        yield Footer(compact=True)

    @staticmethod
    def _table(table_id: str, columns: tuple[tuple[str, str, int], ...]) -> DataTable[Text]:
        table: DataTable[Text] = DataTable(id=table_id, cursor_type="row", zebra_stripes=True)
        for label, key, width in columns:
            table.add_column(label, width=width, key=key)
        return table

    def table(self, which: Table | Literal["done"]) -> DataTable[Text]:
        return self.query_one(f"#jobs-{which}", DataTable)

    def live_mount(self, snapshot: NodeSnapshot) -> None:
        self._units = token_units(snapshot.chain)
        self.jobs = self.node.jobs_snapshot()
        self.redraw()
        self._focus_active()
        self.set_interval(1.0, self._tick_deadlines)

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.redraw()

    def on_engine_chain_status(self, message: msg.ChainStatus) -> None:
        super().on_engine_chain_status(message)
        self._units = token_units(message.event)
        if self.is_current:
            self._draw_hints()

    def models_changed(self) -> None:
        super().models_changed()
        if self.is_mounted:
            self._draw_hints()

    def on_engine_jobs_changed(self, message: msg.JobsChanged) -> None:
        super().on_engine_jobs_changed(message)
        self.jobs = message.event
        if self.is_current:
            self.redraw()
        detail = self.app.screen
        if isinstance(detail, JobDetailScreen):
            view = self._find(detail.job_key)
            if view is not None:
                detail.show(view)

    # --- drawing --------------------------------------------------------------------------

    def redraw(self) -> None:
        """Rebuild the three tables (at most 4 times a second), keeping each cursor's job."""
        jobs, now = self.jobs, time.time()
        self.query_one("#jobs-summary", Static).update(
            summary_line(jobs.mode, len(jobs.market), len(jobs.queue), jobs.lost_count)
        )
        with self.app.batch_update():
            self._fill("market", jobs.market, lambda v: market_cells(v, self._unit(v), now))
            self._fill("queue", jobs.queue, lambda v: queue_cells(v, self._unit(v), now))
            done = self.table("done")
            done.clear()
            for view in jobs.done:
                done.add_row(*self._texts(done_cells(view), DONE_COLUMNS, DIM))
            done.display = bool(jobs.done)
            title = "Done (newest first)" if jobs.done else "Done: nothing finished yet"
            self.query_one("#jobs-done-title", Static).update(title)
            self._draw_hints()

    def _fill(self, which: Table, views: tuple[JobView, ...], cells: _Cells) -> None:
        table = self.table(which)
        columns = table_columns(which)
        rows = {str(v.key): self._texts(cells(v), columns, self._row_style(v)) for v in views}
        drawn = self._drawn[which]
        if list(rows) == list(drawn) and table.row_count == len(rows):
            for row_key, texts in rows.items():
                for (_, column, _), new, old in zip(columns, texts, drawn[row_key], strict=True):
                    if (new.plain, new.style) != (old.plain, old.style):
                        table.update_cell(row_key, column, new)
        else:
            keep = self._cursor_key(table)
            table.clear()
            for row_key, texts in rows.items():
                table.add_row(*texts, key=row_key)
            if keep in rows:
                table.move_cursor(row=list(rows).index(keep))
        self._drawn[which] = rows

    def _texts(
        self, cells: tuple[str, ...], columns: tuple[tuple[str, str, int], ...], style: Style | str
    ) -> list[Text]:
        return [
            Text(cell, style=style, justify="right" if key in _RIGHT else "left")
            for cell, (_, key, _) in zip(cells, columns, strict=True)
        ]

    def _row_style(self, view: JobView) -> Style | str:
        if view.state == JobState.PENDING_APPROVAL:
            return theme_style(self.app, "warning", bold=True)
        if view.state == JobState.RUNNING:
            return theme_style(self.app, "success")
        return ""

    def _draw_hints(self) -> None:
        jobs = self.jobs
        sections: tuple[tuple[Table, tuple[JobView, ...], str], ...] = (
            ("market", jobs.market, market_hint(self.node.chain_status(), len(self.loaded))),
            ("queue", jobs.queue, queue_hint(jobs.mode)),
        )
        for which, views, hint in sections:
            label = self.query_one(f"#jobs-{which}-hint", Static)
            label.update(hint)
            label.display = not views
            self.table(which).display = bool(views)

    def _tick_deadlines(self) -> None:
        """Count each deadline down between pictures: one cell per row, no rebuild."""
        if not self.is_current:
            return
        now = time.time()
        sections: tuple[tuple[Table, tuple[JobView, ...]], ...] = (
            ("market", self.jobs.market),
            ("queue", self.jobs.queue),
        )
        for which, views in sections:
            table, drawn = self.table(which), self._drawn[which]
            column = [key for _, key, _ in table_columns(which)].index("deadline")
            for view in views:
                row_key = str(view.key)
                cell = Text(countdown(view.deadline - now), style=self._row_style(view))
                try:
                    table.update_cell(row_key, "deadline", cell)
                except CellDoesNotExist:
                    continue
                if row_key in drawn:
                    drawn[row_key][column] = cell

    def _unit(self, view: JobView) -> TokenUnits:
        return units_for(view.token, self._units)

    # --- selection ------------------------------------------------------------------------

    @staticmethod
    def _cursor_key(table: DataTable[Text]) -> str | None:
        if table.row_count == 0:
            return None
        try:
            row_key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return str(row_key.value) if row_key.value is not None else None

    def _find(self, key: JobKey) -> JobView | None:
        jobs = self.jobs
        return find_view((*jobs.market, *jobs.queue, *jobs.done), key)

    def selected_view(self, which: Table | None = None) -> JobView | None:
        """The job under the cursor of `which` (default: the active table)."""
        which = which or self.active
        table = self.table(which)
        if not table.display:
            return None
        wanted = self._cursor_key(table)
        views = self.jobs.market if which == "market" else self.jobs.queue
        return next((v for v in views if str(v.key) == wanted), None)

    def _focus_active(self) -> None:
        table = self.table(self.active)
        if table.display:
            table.focus()

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        if event.widget.id in ("jobs-market", "jobs-queue"):
            self.active = "market" if event.widget.id == "jobs-market" else "queue"

    def action_switch_table(self) -> None:
        self.active = "queue" if self.active == "market" else "market"
        self._focus_active()
        if not self.table(self.active).display:
            self.notify(f"The {self.active} is empty.", markup=False)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_detail()

    def action_detail(self) -> None:
        view = self.selected_view()
        if view is None:
            self.notify(f"No job selected in the {self.active}.", markup=False)
            return
        self.app.push_screen(JobDetailScreen(view, self._unit(view)))

    # --- commands -------------------------------------------------------------------------

    def action_claim(self) -> None:
        view = self.selected_view("market") if self.active == "market" else None
        if view is None:
            self.notify("Select an open job in the market to claim (tab switches).", markup=False)
            return
        self._run(view, "Claim")

    def action_accept(self) -> None:
        view = self.selected_view("queue") if self.active == "queue" else None
        if view is None or view.state != JobState.PENDING_APPROVAL:
            self.notify("Select work waiting for approval in the queue to accept.", markup=False)
            return
        self._run(view, "Accept")

    def action_reject(self) -> None:
        view = self.selected_view()
        if view is None or (self.active == "queue" and view.state != JobState.PENDING_APPROVAL):
            self.notify(
                "Select an open job, or work waiting for approval, to reject.", markup=False
            )
            return
        self._run(view, "Reject")

    def _run(self, view: JobView, verb: Verb) -> None:
        self.run_worker(
            self._decide_then_send(view, verb),
            name=f"{verb.lower()} job {view.job_id}",
            group="operator",
            exit_on_error=False,
        )

    async def _decide_then_send(self, view: JobView, verb: Verb) -> None:
        """Quote (claim, accept) or confirm (reject), then the Node command; a refusal is a
        notification with its reason, never an exception on screen."""
        title = f"Job {view.job_id} not {_PAST[verb]}"
        try:
            if verb == "Reject":
                yes = await self.app.push_screen(RejectJobScreen(view), wait_for_dismiss=True)
            else:
                quote = await self.node.quote_job(view.key)
                if quote.refusal:
                    self.notify(quote.refusal, title=title, severity="warning", markup=False)
                    return
                yes = await self.app.push_screen(JobQuoteScreen(quote, verb), wait_for_dismiss=True)
            if not yes:
                return
            command = {
                "Claim": self.node.claim_job,
                "Accept": self.node.accept_job,
                "Reject": self.node.reject_job,
            }[verb]
            done = await command(view.key)
        except JobCommandError as exc:
            self.notify(str(exc), title=title, severity="error", markup=False)
            return
        self.notify(f"Job {done.job_id}: {done.state.value}", title=f"Job {_PAST[verb]}")


def table_columns(which: Table) -> tuple[tuple[str, str, int], ...]:
    return MARKET_COLUMNS if which == "market" else QUEUE_COLUMNS
