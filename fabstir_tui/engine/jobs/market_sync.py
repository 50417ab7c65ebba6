"""Brings the job book in line with the chain as the follower applied it (table market_jobs).

The ledger mirrors every JobMarketplace event into market_jobs exactly once, in the
transaction that marks the log applied; this module reads that mirror and moves our book:
new open jobs for models we serve enter the market list, jobs another host claimed first
become lost, and our own jobs follow the chain (submitted, challenged, released, refunded,
expired). A job with an effect in flight is left to that effect's driver.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from fabstir_tui.engine.jobs.book import JobBook
from fabstir_tui.engine.jobs.records import JobKey, JobRecord
from fabstir_tui.engine.jobs.states import JobKind, JobState, is_terminal
from fabstir_tui.engine.store import Store

S = JobState
_MARKET_COLUMNS = (
    "job_id, client, model_id, token, escrow, max_tokens, max_price, deadline, prompt_hash, "
    "status, host, price, tokens_used, submitted_at, host_amount, settled_tx, updated_block"
)


@dataclass(frozen=True, slots=True)
class MarketRow:
    """One job as the chain tells it (market_jobs); amounts are ints."""

    job_id: int
    client: str
    model_id: str
    token: str
    escrow: int
    max_tokens: int
    max_price: int
    deadline: int
    prompt_hash: str
    status: str  # open, claimed, submitted, challenged, released, refunded, cancelled, expired
    host: str
    price: int | None
    tokens_used: int | None
    submitted_at: int | None
    host_amount: int | None
    settled_tx: str
    updated_block: int


def _row(r: tuple[object, ...]) -> MarketRow:
    def opt(value: object) -> int | None:
        return None if value is None else int(str(value))

    return MarketRow(
        job_id=int(str(r[0])),
        client=str(r[1]),
        model_id=str(r[2]).lower(),
        token=str(r[3]),
        escrow=int(str(r[4])),
        max_tokens=int(str(r[5])),
        max_price=int(str(r[6])),
        deadline=int(str(r[7])),
        prompt_hash=str(r[8]).lower(),
        status=str(r[9]),
        host=str(r[10] or ""),
        price=opt(r[11]),
        tokens_used=opt(r[12]),
        submitted_at=opt(r[13]),
        host_amount=opt(r[14]),
        settled_tx=str(r[15] or ""),
        updated_block=int(str(r[16])),
    )


def market_row(store: Store, job_id: str | int) -> MarketRow | None:
    """The chain's view of one job, or None when the follower has not seen it."""
    rows = store.query(f"SELECT {_MARKET_COLUMNS} FROM market_jobs WHERE job_id=?", (int(job_id),))
    return _row(rows[0]) if rows else None


def market_rows_since(store: Store, block: int) -> list[MarketRow]:
    """Jobs whose chain state changed after `block`, oldest change first."""
    rows = store.query(
        f"SELECT {_MARKET_COLUMNS} FROM market_jobs WHERE updated_block > ? "
        "ORDER BY updated_block, job_id",
        (block,),
    )
    return [_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one pass changed: jobs that entered the book and jobs that moved."""

    new: tuple[JobKey, ...]
    moved: tuple[tuple[JobKey, JobState], ...]
    watermark: int


class MarketSync:
    """Reconciles the book with market_jobs for one chain and marketplace."""

    def __init__(self, book: JobBook, store: Store, chain_id: int, contract: str, host: str):
        self.book = book
        self.store = store
        self.chain_id = chain_id
        self.contract = contract.lower()
        self.host = host.lower()
        self.watermark = -1
        self._served: set[str] = set()

    def key(self, job_id: str | int) -> JobKey:
        return JobKey(JobKind.OPEN, self.chain_id, self.contract, str(job_id))

    def run(self, served: Collection[str], now: int) -> SyncResult:
        """One pass: new rows since the watermark, then every unfinished book job."""
        new: list[JobKey] = []
        moved: list[tuple[JobKey, JobState]] = []
        if not set(served) <= self._served:  # a model was added or hashed: look again
            self.watermark = -1
        self._served = set(served)
        fresh = market_rows_since(self.store, self.watermark)
        for row in fresh:
            key = self.key(row.job_id)
            known = self.book.get(key) is not None
            if (
                not known
                and self._wanted(row, served, now)
                and self.book.upsert_seen(
                    key,
                    model_id=row.model_id,
                    client=row.client,
                    max_tokens=row.max_tokens,
                    price=str(row.max_price),
                    deadline=row.deadline,
                    prompt_hash=row.prompt_hash,
                )
            ):
                new.append(key)
        if fresh:
            self.watermark = max(row.updated_block for row in fresh)
        pending = self.book.pending_keys()
        for record in self._unfinished():
            if record.key in pending:
                continue
            chain_row = market_row(self.store, record.key.job_id)
            if chain_row is None:
                continue
            target = self._follow(record, chain_row, now)
            if target is not None:
                moved.append((record.key, target))
        return SyncResult(tuple(new), tuple(moved), self.watermark)

    def _wanted(self, row: MarketRow, served: Collection[str], now: int) -> bool:
        """An open job, not yet due, for a model on this node; or one that names us as host
        (claimed with this key elsewhere: the book adopts it rather than ignore our money)."""
        if row.host.lower() == self.host and row.status in ("claimed", "submitted"):
            return True
        return row.status == "open" and row.model_id in served and row.deadline > now

    def _unfinished(self) -> list[JobRecord]:
        rows = self.store.query(
            "SELECT job_id FROM jobs WHERE kind=? AND chain_id=? AND contract=?",
            (JobKind.OPEN.value, self.chain_id, self.contract),
        )
        records = [self.book.get(self.key(str(r[0]))) for r in rows]
        return [r for r in records if r is not None and not is_terminal(r.key.kind, r.state)]

    def _follow(self, record: JobRecord, row: MarketRow, now: int) -> JobState | None:
        """Move one job to where the chain says it is; the state it moved to, or None."""
        ours = row.host.lower() == self.host
        state = record.state
        key = record.key
        if row.status in ("cancelled", "expired"):
            why = "the client cancelled it" if row.status == "cancelled" else "it expired"
            return self._go(key, state, S.EXPIRED, f"{why} on-chain")
        if state in (S.SEEN, S.PENDING_APPROVAL, S.APPROVED):
            if row.status != "open" and not ours:
                return self._go(key, state, S.LOST, f"claimed first by {row.host}")
            if row.status != "open" and ours:
                if state != S.APPROVED:
                    self.book.transition(key, S.APPROVED, detail="claimed with this key")
                return self._go(key, S.APPROVED, S.CLAIMED, "claimed with this key")
            if row.deadline <= now:
                return self._go(key, state, S.EXPIRED, "the deadline passed before a claim")
            return None
        # CLAIMED while the mirror still says open is the follower lagging our own claim tx
        # (only the host can unclaim, and our unclaim is an effect): nothing to follow.
        if state == S.CLAIMED and row.status == "submitted" and ours:
            # Submitted with this key outside this node: follow it so the payment is awaited.
            self.book.transition(key, S.RUNNING, detail="submitted with this key elsewhere")
            self.book.transition(key, S.DELIVERED, detail="submitted with this key elsewhere")
            return self._go(key, S.DELIVERED, S.SUBMITTED, "submitted with this key elsewhere")
        if state in (S.SUBMITTED, S.CHALLENGED):
            if row.status == "released":
                paid = "" if row.host_amount is None else f"paid {row.host_amount}"
                return self._go(key, state, S.RELEASED, paid)
            if row.status == "refunded":
                return self._go(key, state, S.REFUNDED, "the arbiter upheld a challenge")
            if row.status == "challenged" and state == S.SUBMITTED:
                return self._go(key, state, S.CHALLENGED, "the client challenged the result")
        return None

    def _go(self, key: JobKey, state: JobState, to: JobState, detail: str) -> JobState | None:
        if state == to:
            return None
        self.book.transition(key, to, detail=detail)
        return to
