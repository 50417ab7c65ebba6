"""The Dashboard's two work panels: the job queue at a glance and what the node has earned,
each two lines so the dashboard still fits 80x24 (details live on 2 Jobs and 5 Earnings)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from fabstir_tui.engine.chain.events import ChainStatus, TokenBalance
from fabstir_tui.engine.jobs.states import JobState
from fabstir_tui.engine.jobs.views import JobsChanged
from fabstir_tui.ui.job_format import compact_amount

S = JobState
_CLAIMED = frozenset({S.APPROVED, S.CLAIMED})
_RUNNING = frozenset({S.RUNNING, S.ACTIVE})
_SUBMITTED = frozenset({S.DELIVERED, S.SUBMITTED, S.CHALLENGED})


@dataclass(frozen=True, slots=True)
class JobCounts:
    """The numbers the Jobs panel shows, from one JobsChanged picture."""

    market: int
    claimed: int
    running: int
    submitted: int
    waiting: int  # work addressed to us that needs `a` or `x`
    lost: int
    tokens_per_s: float | None  # the running job's (summed when several run)


def job_counts(jobs: JobsChanged) -> JobCounts:
    states = [view.state for view in jobs.queue]
    rates = [v.tokens_per_s for v in jobs.queue if v.state in _RUNNING and v.tokens_per_s]
    return JobCounts(
        market=len(jobs.market),
        claimed=sum(1 for s in states if s in _CLAIMED),
        running=sum(1 for s in states if s in _RUNNING),
        submitted=sum(1 for s in states if s in _SUBMITTED),
        waiting=sum(1 for s in states if s == S.PENDING_APPROVAL),
        lost=jobs.lost_count,
        tokens_per_s=sum(rates) if rates else None,
    )


def earnings_balance(status: ChainStatus | None) -> TokenBalance | None:
    """The payment token's line (else the first token that earned, else the first)."""
    if status is None or not status.balances:
        return None
    balances = status.balances
    wanted = status.payment_token.lower()
    return (
        next((b for b in balances if wanted and b.token.lower() == wanted), None)
        or next((b for b in balances if b.earned_total), None)
        or balances[0]
    )


def _figure(label: str, value: str) -> tuple[tuple[str, str], tuple[str, str]]:
    return ((label, "$text-muted"), (value, "bold"))


class JobsSummaryPanel(Widget):
    """A leaf over one immutable picture; `off` says why there is no pipeline."""

    DEFAULT_CLASSES = "panel"
    DEFAULT_CSS = """
    JobsSummaryPanel {
        width: 1fr;
        height: 4;
    }
    """

    jobs: reactive[JobsChanged | None] = reactive(None)
    off: reactive[str] = reactive("")

    def on_mount(self) -> None:
        self.border_title = "Jobs"

    def watch_jobs(self, jobs: JobsChanged | None) -> None:
        waiting = job_counts(jobs).waiting if jobs is not None else 0
        self.border_subtitle = f"{waiting} to approve on 2" if waiting else ""

    def render(self) -> Content:
        if self.off:
            return Content.styled(self.off, "$text-muted")
        if self.jobs is None:
            return Content.styled("Waiting for the job pipeline…", "$text-muted")
        c = job_counts(self.jobs)
        rate = [] if c.tokens_per_s is None else [("  ", ""), (f"{c.tokens_per_s:.1f} tok/s", "")]
        return Content.assemble(
            *_figure("market ", str(c.market)),
            *_figure("  claimed ", str(c.claimed)),
            *_figure("  running ", str(c.running)),
            "\n",
            *_figure("submitted ", str(c.submitted)),
            *_figure("  lost ", str(c.lost)),
            *rate,
        )


class EarningsSummaryPanel(Widget):
    """A leaf over one ChainStatus; amounts exact when they fit, else rounded and marked ~."""

    DEFAULT_CLASSES = "panel"
    DEFAULT_CSS = """
    EarningsSummaryPanel {
        width: 1fr;
        height: 4;
    }
    """

    status: reactive[ChainStatus | None] = reactive(None)

    def on_mount(self) -> None:
        self.border_title = "Earnings"

    def watch_status(self, status: ChainStatus | None) -> None:
        balance = earnings_balance(status)
        self.border_title = "Earnings" if balance is None else f"Earnings · {balance.symbol}"
        others = 0
        if status is not None and balance is not None:
            others = sum(1 for b in status.balances if b is not balance and b.earned_total)
        self.border_subtitle = f"+{others} more token(s) on 5" if others else ""

    def render(self) -> Content:
        status = self.status
        if status is None or not status.enabled:
            return Content.styled("No chain configured: nothing earned.", "$text-muted")
        balance = earnings_balance(status)
        if balance is None:
            return Content.styled("Waiting for the first balance reading…", "$text-muted")
        # two figures a line: 16 cells of labels, the rest split between the two values
        width = max(6, (self.size.width - 16) // 2)

        def amount(value: int) -> str:
            return compact_amount(value, balance.decimals, width).rjust(width)

        return Content.assemble(
            *_figure("today  ", amount(balance.earned_today)),
            *_figure("  7 days ", amount(balance.earned_7d)),
            "\n",
            *_figure("total  ", amount(balance.earned_total)),
            *_figure("  escrow ", amount(balance.held_in_escrow)),
        )
