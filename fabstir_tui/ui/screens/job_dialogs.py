"""The Jobs screen's dialogs: the quote an operator claims or accepts on, the reject confirm,
and a job's detail pane whose output preview follows the job while it runs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.views import JobQuote, JobView
from fabstir_tui.ui.job_format import (
    TokenUnits,
    detail_lines,
    model_label,
    preview_tail,
    quote_rows,
)

PREVIEW_WIDTH = 72  # the detail pane is 78 wide, less border and padding
PREVIEW_LINES = 5

# Not the shared `.dialog` class: app.tcss outranks DEFAULT_CSS, and these need 78 columns
# with little padding to show a quote at 80x24. Same look, theme variables only.
_DIALOG_CSS = """
JobQuoteScreen, RejectJobScreen, JobDetailScreen {
    align: center middle;
}
.job-dialog {
    width: 78;
    max-width: 100%;
    height: auto;
    max-height: 100%;
    border: thick $primary;
    background: $surface;
    padding: 0 1;
}
#job-reject {
    width: 66;
}
#job-quote-rows {
    height: auto;
    max-height: 15;
}
#job-detail-body {
    height: auto;
    max-height: 11;
}
#job-preview {
    height: auto;
    max-height: 6;
    border-top: solid $primary 50%;
}
"""


class JobQuoteScreen(ModalScreen[bool]):
    """Answers True to claim (or accept): y does; n, escape or enter (Cancel has the focus)
    do not."""

    DEFAULT_CSS = _DIALOG_CSS
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", show=False),
        Binding("n", "answer(False)", "Cancel", show=False),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def __init__(self, quote: JobQuote, verb: str) -> None:
        super().__init__()
        self.quote = quote
        self.verb = verb  # "Claim" or "Accept"

    def compose(self) -> ComposeResult:
        job = self.quote.job
        with Vertical(id="job-quote", classes="job-dialog"):
            yield Label(
                f"{self.verb} job {job.job_id} ({model_label(job)})?",
                classes="dialog-title",
                markup=False,
            )
            with VerticalScroll(id="job-quote-rows"):
                for label, value in quote_rows(self.quote):
                    with Horizontal(classes="confirm-row"):
                        yield Static(label, classes="confirm-label", markup=False)
                        yield Static(value, classes="confirm-value", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.verb} (y)", variant="warning", id="job-quote-yes")
                yield Button("Cancel (n)", variant="primary", id="job-quote-no")

    def on_mount(self) -> None:
        self.query_one("#job-quote-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "job-quote-yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class RejectJobScreen(ModalScreen[bool]):
    """Answers True to reject: y does; n, escape or enter (Keep has the focus) keep it."""

    DEFAULT_CSS = _DIALOG_CSS
    BINDINGS = [
        Binding("y", "answer(True)", "Reject", show=False),
        Binding("n", "answer(False)", "Keep", show=False),
        Binding("escape", "answer(False)", "Keep", show=False),
    ]

    def __init__(self, view: JobView) -> None:
        super().__init__()
        self.view = view

    def compose(self) -> ComposeResult:
        view = self.view
        with Vertical(id="job-reject", classes="job-dialog"):
            yield Label(f"Reject job {view.job_id}?", classes="dialog-title", markup=False)
            yield Static(
                f"{model_label(view)}, {view.max_tokens:,} tokens max, client {view.client}",
                markup=False,
            )
            yield Static(
                "It leaves our market and queue for good; nothing is sent on-chain.",
                classes="dialog-hint",
                markup=False,
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Reject (y)", variant="error", id="job-reject-yes")
                yield Button("Keep (n)", variant="primary", id="job-reject-no")

    def on_mount(self) -> None:
        self.query_one("#job-reject-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "job-reject-yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class JobDetailScreen(ModalScreen[None]):
    """Every field of one job and the tail of its output; the Jobs screen hands it each newer
    view of the job (`show`) while it is open."""

    DEFAULT_CSS = _DIALOG_CSS
    BINDINGS = [
        Binding("escape", "dismiss", "Close", show=False),
        Binding("enter", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, view: JobView, units: TokenUnits) -> None:
        super().__init__()
        self.view = view
        self.units = units

    @property
    def job_key(self) -> JobKey:
        return self.view.key

    def compose(self) -> ComposeResult:
        with Vertical(id="job-detail", classes="job-dialog"):
            yield Label("", id="job-detail-title", classes="dialog-title", markup=False)
            with VerticalScroll(id="job-detail-body"):
                yield Static("", id="job-detail-fields", markup=False)
            yield Static("", id="job-preview", markup=False)
            yield Label("escape closes", classes="muted")

    def on_mount(self) -> None:
        self.show(self.view)

    def show(self, view: JobView) -> None:
        """Draw `view` (a newer picture of the same job)."""
        self.view = view
        title = f"Job {view.job_id} · {view.state.value} · {model_label(view)}"
        self.query_one("#job-detail-title", Label).update(title)
        self.query_one("#job-detail-fields", Static).update(
            "\n".join(detail_lines(view, self.units))
        )
        preview = preview_tail(view.preview, PREVIEW_WIDTH, PREVIEW_LINES) or "(no output yet)"
        self.query_one("#job-preview", Static).update(preview)
