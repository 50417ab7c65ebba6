"""Builds JobViews from the book, the chain mirror and runs in flight (views.py is the contract)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir_tui.engine.jobs.market_sync import market_row
from fabstir_tui.engine.jobs.records import JobRecord
from fabstir_tui.engine.jobs.sessions import session_row
from fabstir_tui.engine.jobs.states import (
    OPEN_JOB_TRANSITIONS,
    SESSION_TRANSITIONS,
    JobKind,
    JobState,
)
from fabstir_tui.engine.jobs.views import JobsChanged, JobView

if TYPE_CHECKING:
    from fabstir_tui.engine.jobs.pipeline import JobPipeline

DONE_LIMIT = 50


class ViewBuilder:
    """Reads; never writes. One per pipeline."""

    def __init__(self, pipeline: JobPipeline) -> None:
        self.pipeline = pipeline

    def _names(self) -> dict[str, str]:
        return {"0x" + m.sha256: m.name for m in self.pipeline.node.list_models() if m.sha256}

    def view(self, record: JobRecord, names: dict[str, str] | None = None) -> JobView:
        """One job as the UI shows it: book state, chain facts, live progress."""
        names = self._names() if names is None else names
        if record.key.kind == JobKind.SESSION:
            return self._session_view(record, names)
        row = market_row(self.pipeline.store, record.key.job_id)
        run = self.pipeline.runs.progress_of(record.key)
        ours = row is not None and row.host.lower() == self.pipeline.host.lower()
        lost_to = row.host if row is not None and row.host and not ours else ""
        tokens = run.tokens if run is not None else (record.tokens_used or 0)
        return JobView(
            key=record.key,
            state=record.state,
            model_id=record.model_id or "",
            model_name=names.get(record.model_id or "", ""),
            client=record.client or "",
            token=row.token if row is not None else "",
            escrow=row.escrow if row is not None else 0,
            max_tokens=record.max_tokens or 0,
            max_price_per_million=int(record.price or 0),
            price_per_million=row.price if row is not None and ours else None,
            deadline=record.deadline or 0,
            tokens=tokens,
            tokens_per_s=run.tokens_per_s if run is not None else None,
            queue_position=self.pipeline.runs.position(record.key),
            lost_to=lost_to if record.state == JobState.LOST else "",
            detail=record.detail or "",
            preview=run.preview if run is not None else "",
            updated_at=record.updated_at,
        )

    def _session_view(self, record: JobRecord, names: dict[str, str]) -> JobView:
        """A session: its deposit stands where a job's escrow does, its timeout for a deadline."""
        row = session_row(self.pipeline.store, record.key.job_id)
        run = self.pipeline.runs.progress_of(record.key)
        proven = row.tokens_proven if row is not None else 0
        return JobView(
            key=record.key,
            state=record.state,
            model_id=record.model_id or "",
            model_name=names.get(record.model_id or "", ""),
            client=record.client or "",
            token=row.token if row is not None else "",
            escrow=row.deposit if row is not None else 0,
            max_tokens=0,
            max_price_per_million=int(record.price or 0),
            price_per_million=row.price if row is not None else None,
            deadline=row.ends_at if row is not None else 0,
            tokens=run.tokens if run is not None else proven,
            tokens_per_s=run.tokens_per_s if run is not None else None,
            detail=record.detail or f"session: {proven} tokens proven",
            preview=run.preview if run is not None else "",
            updated_at=record.updated_at,
        )

    def snapshot(self) -> JobsChanged:
        """The market, our queue and the newest finished jobs, as one event."""
        p = self.pipeline
        names = self._names()
        market = p.book.market(p.served_models(), p.now())
        queue = p.book.queue()
        finished = [
            r
            for kind, states in ((JobKind.OPEN, _TERMINAL), (JobKind.SESSION, _SESSION_DONE))
            for r in p.book.by_state(kind, states)
            if r.key.chain_id == p.chain_id and r.key.contract == p.contract
        ]
        finished.sort(key=lambda r: r.updated_at, reverse=True)
        lost = sum(1 for r in finished if r.state == JobState.LOST)
        return JobsChanged(
            market=tuple(self.view(r, names) for r in market),
            queue=tuple(self.view(r, names) for r in queue),
            done=tuple(self.view(r, names) for r in finished[:DONE_LIMIT]),
            lost_count=lost,
            mode=p.node.config.jobs.mode,
        )


_TERMINAL = frozenset(state for state, after in OPEN_JOB_TRANSITIONS.items() if not after)
_SESSION_DONE = frozenset(state for state, after in SESSION_TRANSITIONS.items() if not after)
