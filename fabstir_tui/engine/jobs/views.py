"""What the UI and CLI see of the pipeline: immutable job views, the JobsChanged snapshot event
and the quote an approval dialog shows. Built by the pipeline; never read from SQLite by the UI."""

from __future__ import annotations

from dataclasses import dataclass

from fabstir_tui.engine.events import Event
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobState


@dataclass(frozen=True, slots=True)
class JobView:
    """One job or session at one instant; amounts in the payment token's base units."""

    key: JobKey
    state: JobState
    model_id: str  # 0x + 64 hex: the GGUF's SHA-256
    model_name: str  # from the model registry; "" when the file is not on this node
    client: str
    token: str  # payment token address; the zero address is ETH
    escrow: int
    max_tokens: int
    max_price_per_million: int  # the client's maximum
    price_per_million: int | None  # our claimed price, once claimed
    deadline: int  # unix seconds (chain time)
    tokens: int = 0  # completion tokens so far (running) or tokens used (submitted on)
    tokens_per_s: float | None = None
    queue_position: int | None = None  # 1 = next to run; None when not waiting
    lost_to: str = ""  # the host that claimed it first
    detail: str = ""  # why it was rejected, failed, unclaimed; what it waits for
    preview: str = ""  # the tail of the output while it runs (live preview)
    updated_at: float = 0.0

    @property
    def job_id(self) -> str:
        return self.key.job_id


@dataclass(frozen=True, slots=True)
class JobsChanged(Event):
    """The pipeline's whole picture: the market (open jobs we could claim), our queue, and
    recently finished work, newest first; published on every change, at most 4 times/s."""

    market: tuple[JobView, ...] = ()
    queue: tuple[JobView, ...] = ()
    done: tuple[JobView, ...] = ()
    lost_count: int = 0
    mode: str = "manual"  # jobs.mode: "manual" or "auto"


@dataclass(frozen=True, slots=True)
class JobQuote:
    """Everything the claim/accept dialog shows an operator before they decide (§11.7)."""

    job: JobView
    price_per_million: int | None  # our registered price for the model in the job's token
    expected_charge: int  # max tokens at our price, capped by the escrow
    fee: int  # the marketplace's share of that charge
    expected_revenue: int  # charge - fee: what we would be paid
    gas_estimate_wei: int | None  # claim + submit + release at today's fees
    expected_net: int | None  # revenue - gas, when both are in ETH; else None
    tokens_per_s: float | None  # measured on the loaded model
    expected_run_s: float | None  # max tokens / tokens per second
    deadline_in_s: int  # seconds left (negative: passed)
    fits_memory: bool | None  # None when unknown
    memory_note: str
    token_symbol: str
    token_decimals: int
    refusal: str | None  # why it cannot be claimed/accepted now; None when it can


class JobCommandError(Exception):
    """An operator's claim/accept/reject could not be done; the message says why."""
