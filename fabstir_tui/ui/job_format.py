"""Cells and lines of the Jobs screen and its dialogs, kept apart from widgets so one job reads
the same in the tables, the quote dialog and the detail pane (and can be tested bare)."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from fabstir_tui.engine.chain.events import ChainStatus
from fabstir_tui.engine.jobs.quote import ZERO_ADDRESS
from fabstir_tui.engine.jobs.states import JobState
from fabstir_tui.engine.jobs.views import JobQuote, JobsChanged, JobView
from fabstir_tui.ui.format import DASH, clock, ellipsis, short_hex, token_amount

# (label, key, width): fixed widths, so 80 columns hold every column (DESIGN §8).
MARKET_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("id", "id", 5),
    ("model", "model", 15),
    ("client", "client", 11),
    ("max tok", "max_tokens", 7),
    ("max/M", "max_price", 9),
    ("escrow", "escrow", 10),
    ("due in", "deadline", 7),
)
QUEUE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("id", "id", 5),
    ("state", "state", 10),
    ("tokens/max", "tokens", 13),
    ("tok/s", "rate", 6),
    ("pos", "position", 3),
    ("due in", "deadline", 7),
    ("price/M", "price", 11),
)
DONE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("id", "id", 5),
    ("state", "state", 10),
    ("tokens", "tokens", 7),
    ("when", "when", 8),
    ("why", "why", 30),
)
_STATE_LABELS = {JobState.PENDING_APPROVAL: "pending"}
# Shown in the Done list; everything else in our queue is still in progress.
FINISHED_STATES = frozenset(
    {
        JobState.RELEASED,
        JobState.LOST,
        JobState.REJECTED,
        JobState.EXPIRED,
        JobState.FAILED,
        JobState.UNCLAIMED,
        JobState.REFUNDED,
        JobState.COMPLETED,
        JobState.TIMED_OUT,
    }
)


@dataclass(frozen=True, slots=True)
class TokenUnits:
    """How to write an amount of one payment token."""

    symbol: str
    decimals: int


def token_units(status: ChainStatus | None) -> dict[str, TokenUnits]:
    """Symbol and decimals per token address (lower case), from the chain status; ETH always."""
    units = {ZERO_ADDRESS: TokenUnits("ETH", 18)}
    for balance in status.balances if status is not None else ():
        units[balance.token.lower()] = TokenUnits(balance.symbol, balance.decimals)
    return units


def units_for(token: str, units: dict[str, TokenUnits]) -> TokenUnits:
    """An unknown token is written in base units under its short address: never guessed."""
    return units.get(token.lower()) or TokenUnits(short_hex(token, 3), 0)


def compact_amount(value: int | None, decimals: int, width: int) -> str:
    """An amount for a table cell: exact when it fits, else rounded to the decimals that fit
    and marked ~ (the dialog and the detail pane always show it exactly)."""
    exact = token_amount(value, decimals)
    if value is None or len(exact) <= width:
        return exact
    amount = value / 10**decimals
    for places in range(min(decimals, width), -1, -1):
        text = f"~{amount:,.{places}f}"
        if len(text) <= width and float(text[1:].replace(",", "")) != 0:
            return text
    return f"~{amount:.2g}"


def countdown(seconds_left: float) -> str:
    """A deadline as the time left (59m59s, 2h05m, 3d04h); `passed` once it is behind us."""
    left = int(seconds_left)
    if left <= 0:
        return "passed"
    if left < 3_600:
        return f"{left // 60}m{left % 60:02d}s" if left >= 60 else f"{left}s"
    if left < 86_400:
        return f"{left // 3_600}h{left % 3_600 // 60:02d}m"
    return f"{left // 86_400}d{left % 86_400 // 3_600:02d}h"


def state_label(state: JobState) -> str:
    return _STATE_LABELS.get(state, state.value)


def model_label(view: JobView) -> str:
    """The model's name when we have the file, else the start of its id."""
    return view.model_name or view.model_id[:10]


def market_cells(view: JobView, units: TokenUnits, now: float) -> tuple[str, ...]:
    """One open job in the market list."""
    widths = {key: width for _, key, width in MARKET_COLUMNS}
    return (
        ellipsis(view.job_id, widths["id"]),
        ellipsis(model_label(view), widths["model"]),
        short_hex(view.client, 3),
        f"{view.max_tokens:,}",
        compact_amount(view.max_price_per_million, units.decimals, widths["max_price"]),
        compact_amount(view.escrow, units.decimals, widths["escrow"]),
        countdown(view.deadline - now),
    )


def queue_cells(view: JobView, units: TokenUnits, now: float) -> tuple[str, ...]:
    """One job of ours: where it stands, how far it got, how fast, and what it pays."""
    widths = {key: width for _, key, width in QUEUE_COLUMNS}
    rate = DASH if view.tokens_per_s is None else f"{view.tokens_per_s:.1f}"
    position = DASH if view.queue_position is None else str(view.queue_position)
    price = view.price_per_million
    return (
        ellipsis(view.job_id, widths["id"]),
        state_label(view.state),
        ellipsis(f"{view.tokens:,}/{view.max_tokens:,}", widths["tokens"]),
        rate,
        position,
        countdown(view.deadline - now),
        compact_amount(price, units.decimals, widths["price"]),
    )


def done_cells(view: JobView) -> tuple[str, ...]:
    """One finished job: how it ended and why."""
    widths = {key: width for _, key, width in DONE_COLUMNS}
    why = view.detail or (f"claimed first by {short_hex(view.lost_to, 4)}" if view.lost_to else "")
    return (
        ellipsis(view.job_id, widths["id"]),
        state_label(view.state),
        f"{view.tokens:,}",
        clock(view.updated_at) if view.updated_at else DASH,
        ellipsis(why or DASH, widths["why"]),
    )


def summary_line(mode: str, market: int, queue: int, lost_count: int) -> str:
    """The line above the tables: who approves, how much work there is, and races lost."""
    who = "you claim with c" if mode == "manual" else "the policy claims"
    return (
        f"mode {mode} ({who}) · market {market} · queue {queue} · "
        f"lost to faster hosts: {lost_count}"
    )


def market_hint(chain: ChainStatus | None, loaded_models: int) -> str:
    """What to do when the market is empty: the brief reason first."""
    if chain is None or not chain.enabled:
        return "no chain configured: set chain.rpc_urls, or run `fabstir-tui devnet`"
    if loaded_models == 0 or not chain.registered:
        return "no open jobs for the models you serve — load a model / register on Earnings"
    return "no open jobs for the models you serve right now; new ones appear as they are posted"


def queue_hint(mode: str) -> str:
    if mode == "manual":
        return "nothing in our queue — claim an open job with c (tab: market / queue)"
    return "nothing in our queue — the auto policy claims open jobs that pass its rules"


def per_token(price_per_million: int, units: TokenUnits) -> str:
    """A per-million price as the exact price of one token (six more decimals)."""
    return token_amount(price_per_million, units.decimals + 6, units.symbol)


def quote_rows(quote: JobQuote) -> list[tuple[str, str]]:
    """(label, value) rows of the claim / accept dialog, in the order an operator decides."""
    view = quote.job
    units = TokenUnits(quote.token_symbol, quote.token_decimals)
    money = partial(_money, units)
    rows = [
        ("job", f"{view.job_id} ({view.key.kind.value}, {state_label(view.state)})"),
        ("client", view.client),
        ("model", f"{model_label(view)} {short_hex(view.model_id, 4)}"),
        ("max tokens", f"{view.max_tokens:,}"),
    ]
    if quote.price_per_million is None:
        rows.append(("price", "none registered"))
    else:
        rows.append(
            (
                "price",
                f"{per_token(quote.price_per_million, units)} per token "
                f"({money(quote.price_per_million)} per M)",
            )
        )
    rows += [
        ("client's max", f"{money(view.max_price_per_million)} per M"),
        ("escrow", money(view.escrow)),
        ("charge", f"{money(quote.expected_charge)} less fee {money(quote.fee)}"),
        ("revenue", money(quote.expected_revenue)),
    ]
    gas = quote.gas_estimate_wei
    rows.append(("gas estimate", "unknown" if gas is None else token_amount(gas, 18, "ETH")))
    if quote.expected_net is not None:
        rows.append(("net", token_amount(quote.expected_net, 18, "ETH")))
    else:
        reason = "gas unknown" if gas is None else f"paid in {units.symbol}, gas in ETH"
        rows.append(("net", f"{DASH} ({reason})"))
    if quote.expected_run_s is None or quote.tokens_per_s is None:
        rows.append(("run time", "unknown: no tokens/s measured on this model yet"))
    else:
        rows.append(
            (
                "run time",
                f"≤ {duration(quote.expected_run_s)} at {quote.tokens_per_s:.1f} tok/s (measured)",
            )
        )
    due = quote.deadline_in_s
    rows.append(("deadline", f"in {countdown(due)}" if due > 0 else f"passed {-due}s ago"))
    rows.append(("memory", quote.memory_note))
    return rows


def duration(seconds_: float) -> str:
    """A run time: seconds below two minutes, else minutes and seconds."""
    if seconds_ < 120:
        return f"{seconds_:.1f} s"
    return f"{int(seconds_) // 60}m{int(seconds_) % 60:02d}s"


def detail_lines(view: JobView, units: TokenUnits, now: float | None = None) -> list[str]:
    """Every field of a job for the detail pane; the live preview is drawn apart from these."""
    now = time.time() if now is None else now
    money = partial(_money, units)
    claimed = DASH if view.price_per_million is None else f"{money(view.price_per_million)} per M"
    lines = [
        f"state        {view.state.value}",
        f"kind         {view.key.kind.value} on chain {view.key.chain_id}",
        f"contract     {view.key.contract}",
        f"model        {view.model_name or '(not on this node)'}",
        "model id",
        f"  {view.model_id}",
        f"client       {view.client}",
        f"token        {units.symbol} {view.token}",
        f"escrow       {money(view.escrow)}",
        f"max tokens   {view.max_tokens:,}",
        f"max price    {money(view.max_price_per_million)} per M",
        f"our price    {claimed}",
        f"deadline     {clock(view.deadline)} ({countdown(view.deadline - now)} left)",
        f"tokens       {view.tokens:,}",
        f"rate         {DASH if view.tokens_per_s is None else f'{view.tokens_per_s:.1f} tok/s'}",
    ]
    if view.queue_position is not None:
        lines.append(f"queue pos    {view.queue_position}")
    if view.lost_to:
        lines.append(f"lost to      {view.lost_to}")
    lines.append(f"detail       {view.detail or DASH}")
    return lines


def find_view(views: Iterable[JobView], job_key: object) -> JobView | None:
    return next((v for v in views if v.key == job_key), None)


def preview_tail(text: str, width: int, lines: int) -> str:
    """The last `lines` lines of the output wrapped at `width`: a live preview shows the end."""
    wrapped: list[str] = []
    for paragraph in text.splitlines() or [""]:
        wrapped += textwrap.wrap(paragraph, width, replace_whitespace=False) or [""]
    return "\n".join(wrapped[-lines:])


def _money(units: TokenUnits, value: int | None) -> str:
    return token_amount(value, units.decimals, units.symbol)


def jobs_summary(jobs: JobsChanged, active: bool) -> str:
    """The header's jobs segment: what runs, waits and is on offer; empty while off."""
    if not active:
        return ""
    running = sum(1 for v in jobs.queue if v.state in (JobState.RUNNING, JobState.ACTIVE))
    waiting = sum(1 for v in jobs.queue if v.queue_position is not None)
    parts = [f"jobs {running} running"]
    if waiting:
        parts.append(f"{waiting} queued")
    parts.append(f"{len(jobs.market)} open")
    return ", ".join(parts)
