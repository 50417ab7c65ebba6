"""The earnings ledger: our payments, withdrawals and the market mirror, built from our events.

Everything here is a projection of the follower's applied logs (chain_logs), written in the
same transaction that marks a log applied, so it is exactly-once. After a reorg the projection
is rebuilt from the logs that survived; handlers never need to undo a single row.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fabstir_tui.engine.chain.logs import DecodedLog
from fabstir_tui.engine.store import Store

DAY_S = 86_400
_Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TokenEarnings:
    """One payment token's figures; amounts in the token's base units (wei for ETH)."""

    token: str
    earned_today: int
    earned_7d: int
    earned_total: int
    withdrawn_total: int
    held_in_escrow: int
    jobs_awaiting_release: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One row of the ledger: a credit (payment) or a withdrawal, with its transaction."""

    kind: str
    token: str
    amount: int
    block_number: int
    block_time: int
    tx_hash: str
    reference: str
    counterparty: str
    charge: int | None = None  # a job payment's whole split, when its settlement says it
    fee: int | None = None
    refund: int | None = None


def day_start(now: float) -> int:
    """Local midnight: an operator reads 'today' on the rig's clock."""
    local = time.localtime(now)
    return int(time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1)))


def charge_of(tokens: int, price_per_million: int, escrow: int) -> int:
    """What a job charges, as the contract computes it: rounded down, capped by the escrow."""
    return min(tokens * price_per_million // 1_000_000, escrow)


class Ledger:
    """Applies HostEarnings and JobMarketplace events for one host address."""

    def __init__(self, store: Store, host: str, follower: str = "main") -> None:
        self.store = store
        self.host = host.lower()
        self.follower = follower
        self._handlers: dict[tuple[str, str], Callable[[sqlite3.Connection, DecodedLog], None]]
        self._handlers = {
            ("HostEarnings", "Credited"): self._credited,
            ("HostEarnings", "Withdrawn"): self._withdrawn,
            ("JobMarketplace", "JobPosted"): self._posted,
            ("JobMarketplace", "JobClaimed"): self._claimed,
            ("JobMarketplace", "JobUnclaimed"): self._unclaimed,
            ("JobMarketplace", "ResultSubmitted"): self._submitted,
            ("JobMarketplace", "PaymentReleased"): self._released,
            ("JobMarketplace", "JobChallenged"): self._challenged,
            ("JobMarketplace", "ChallengeResolved"): self._resolved,
            ("JobMarketplace", "JobCancelled"): self._closed("cancelled"),
            ("JobMarketplace", "JobExpired"): self._closed("expired"),
            ("JobMarketplace", "SessionCreated"): self._session_created,
            ("JobMarketplace", "ProofSubmitted"): self._proof,
            ("JobMarketplace", "SessionCompleted"): self._session_settled("completed"),
            ("JobMarketplace", "SessionTimedOut"): self._session_settled("timed_out"),
        }

    # --- follower callbacks -------------------------------------------------------------

    def apply(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        """The follower's apply(): runs inside the transaction that marks the log applied."""
        handler = self._handlers.get((log.contract, log.event))
        if handler is not None:
            handler(db, log)

    def on_reorg(self, db: sqlite3.Connection, fork_block: int) -> None:
        """Rebuild the projection from the logs at or below the fork point."""
        db.execute("DELETE FROM earnings_ledger")
        db.execute("DELETE FROM market_jobs")
        db.execute("DELETE FROM market_sessions")
        rows = db.execute(
            """SELECT contract, event, args, address, tx_hash, log_index, block_number,
                      block_hash, block_time
               FROM chain_logs WHERE follower=? AND block_number <= ?
               ORDER BY block_number, log_index""",
            (self.follower, fork_block),
        ).fetchall()
        for row in rows:
            log = DecodedLog(
                contract=str(row[0]),
                event=str(row[1]),
                args=json.loads(row[2]),
                address=str(row[3]),
                tx_hash=str(row[4]),
                log_index=int(row[5]),
                block_number=int(row[6]),
                block_hash=str(row[7]),
                block_time=int(row[8]),
            )
            self.apply(db, log)

    def start_over_unless(self, name: str) -> bool:
        """Drop other followers' cursors and applied logs (another contract set or key), and
        the projection built from them, so the ledger is rebuilt from the chain for what we
        follow now; True when something was dropped."""
        stale = [str(r[0]) for r in self.store.query("SELECT name FROM chain_cursors")]
        stale = [n for n in stale if n != name]
        if not stale:
            return False
        with self.store.transaction() as db:
            for old in stale:
                db.execute("DELETE FROM chain_logs WHERE follower=?", (old,))
                db.execute("DELETE FROM chain_blocks WHERE follower=?", (old,))
                db.execute("DELETE FROM chain_cursors WHERE name=?", (old,))
            self.on_reorg(db, -1)  # nothing of ours left to replay: start empty
        return True

    # --- HostEarnings -------------------------------------------------------------------

    def _ours(self, address: object) -> bool:
        return str(address).lower() == self.host

    def _entry(
        self, db: sqlite3.Connection, log: DecodedLog, kind: str, ref: str | None, other: str
    ) -> None:
        db.execute(
            """INSERT OR IGNORE INTO earnings_ledger (tx_hash, log_index, block_number,
                 block_time, kind, token, amount, job_id, counterparty)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                log.tx_hash,
                log.log_index,
                log.block_number,
                log.block_time,
                kind,
                str(log.args["token"]),
                str(int(log.args["amount"])),
                ref,
                other,
            ),
        )

    def _credited(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        if not self._ours(log.args["host"]):
            return
        ref = _settled_ref(db, log.tx_hash)
        self._entry(db, log, "credit", ref, "")

    def _withdrawn(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        if self._ours(log.args["host"]):
            self._entry(db, log, "withdraw", None, str(log.args.get("to", "")))

    # --- open jobs ----------------------------------------------------------------------

    def _posted(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        a = log.args
        db.execute(
            """INSERT OR REPLACE INTO market_jobs (job_id, client, model_id, token, escrow,
                 max_tokens, max_price, deadline, prompt_hash, status, posted_block,
                 updated_block)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)""",
            (
                int(a["jobId"]),
                str(a["client"]),
                str(a["modelId"]),
                str(a["token"]),
                str(int(a["escrow"])),
                int(a["maxTokens"]),
                str(int(a["maxPricePerMillion"])),
                int(a["deadline"]),
                str(a["promptHash"]),
                log.block_number,
                log.block_number,
            ),
        )

    def _set_job(self, db: sqlite3.Connection, log: DecodedLog, sql: str, *params: object) -> None:
        db.execute(
            f"UPDATE market_jobs SET {sql}, updated_block=? WHERE job_id=?",
            (*params, log.block_number, int(log.args["jobId"])),
        )

    def _claimed(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        a = log.args
        self._set_job(
            db, log, "status='claimed', host=?, price=?", str(a["host"]), str(a["pricePerMillion"])
        )

    def _unclaimed(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        self._set_job(db, log, "status='open', host=NULL, price=NULL")

    def _submitted(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        a = log.args
        self._set_job(
            db,
            log,
            "status='submitted', tokens_used=?, submitted_at=?",
            int(a["tokensUsed"]),
            log.block_time,
        )

    def _released(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        a = log.args
        self._set_job(
            db,
            log,
            "status='released', host_amount=?, settled_tx=?, charge=?, fee=?, refund=?",
            str(int(a["hostAmount"])),
            log.tx_hash,
            str(int(a["charge"])),
            str(int(a["fee"])),
            str(int(a["refund"])),
        )
        _link_credit(db, log.tx_hash, f"job {int(a['jobId'])}")

    def _challenged(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        self._set_job(db, log, "status='challenged'")

    def _resolved(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        upheld = bool(log.args["upheld"])
        status = "refunded" if upheld else "released"
        self._set_job(db, log, "status=?, settled_tx=?", status, log.tx_hash)
        _link_credit(db, log.tx_hash, f"job {int(log.args['jobId'])}")

    def _closed(self, status: str) -> Callable[[sqlite3.Connection, DecodedLog], None]:
        def handler(db: sqlite3.Connection, log: DecodedLog) -> None:
            self._set_job(db, log, "status=?, settled_tx=?", status, log.tx_hash)

        return handler

    # --- sessions -----------------------------------------------------------------------

    def _session_created(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        a = log.args
        if not self._ours(a["host"]):
            return
        db.execute(
            """INSERT OR REPLACE INTO market_sessions (session_id, client, host, model_id, token,
                 deposit, price, tokens, status, updated_block, proof_interval, timeout,
                 last_activity)
               VALUES (?, ?, ?, ?, ?, ?, ?, 0, 'active', ?, ?, ?, ?)""",
            (
                int(a["sessionId"]),
                str(a["client"]),
                str(a["host"]),
                str(a["modelId"]),
                str(a["token"]),
                str(int(a["deposit"])),
                str(int(a["pricePerMillion"])),
                log.block_number,
                str(int(a["proofInterval"])),
                int(a["timeout"]),
                log.block_time,
            ),
        )

    def _proof(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        db.execute(
            """UPDATE market_sessions SET tokens=?, updated_block=?, last_activity=?
               WHERE session_id=?""",
            (
                int(log.args["totalTokens"]),
                log.block_number,
                log.block_time,
                int(log.args["sessionId"]),
            ),
        )

    def _session_settled(self, status: str) -> Callable[[sqlite3.Connection, DecodedLog], None]:
        def handler(db: sqlite3.Connection, log: DecodedLog) -> None:
            sid = int(log.args["sessionId"])
            db.execute(
                """UPDATE market_sessions SET status=?, host_amount=?, settled_tx=?,
                     updated_block=? WHERE session_id=?""",
                (status, str(int(log.args["hostAmount"])), log.tx_hash, log.block_number, sid),
            )
            _link_credit(db, log.tx_hash, f"session {sid}")

        return handler

    # --- reading ------------------------------------------------------------------------

    def entries(self, limit: int = 200) -> list[LedgerEntry]:
        """Newest first: what the Earnings screen lists, one row per payment or withdrawal."""
        rows = self.store.query(
            """SELECT e.kind, e.token, e.amount, e.block_number, e.block_time, e.tx_hash,
                      e.job_id, e.counterparty, m.charge, m.fee, m.refund
               FROM earnings_ledger e
               LEFT JOIN market_jobs m ON e.kind = 'credit' AND m.settled_tx = e.tx_hash
               ORDER BY e.block_number DESC, e.log_index DESC LIMIT ?""",
            (limit,),
        )

        def amount(value: object) -> int | None:
            return None if value is None else int(str(value))

        return [
            LedgerEntry(
                kind=str(r[0]),
                token=str(r[1]),
                amount=int(str(r[2])),
                block_number=int(str(r[3])),
                block_time=int(str(r[4])),
                tx_hash=str(r[5]),
                reference=str(r[6] or ""),
                counterparty=str(r[7] or ""),
                charge=amount(r[8]),
                fee=amount(r[9]),
                refund=amount(r[10]),
            )
            for r in rows
        ]

    def summary(self, fee_bps: int, now: float | None = None) -> dict[str, TokenEarnings]:
        """Per token: earned today / 7 days / total, withdrawn, and what submitted jobs and
        proven session work will pay us (host share after the fee) once released."""
        now = time.time() if now is None else now
        today, week = day_start(now), int(now) - 7 * DAY_S
        figures: dict[str, dict[str, int]] = {}

        def slot(token: str) -> dict[str, int]:
            return figures.setdefault(
                token, {"today": 0, "week": 0, "total": 0, "out": 0, "held": 0, "waiting": 0}
            )

        for kind, token, amount, block_time in self.store.query(
            "SELECT kind, token, amount, block_time FROM earnings_ledger"
        ):
            f, value, at = slot(str(token)), int(str(amount)), int(str(block_time))
            if kind == "withdraw":
                f["out"] += value
                continue
            f["total"] += value
            f["week"] += value if at >= week else 0
            f["today"] += value if at >= today else 0
        for token, escrow, price, tokens in self.store.query(
            """SELECT token, escrow, price, tokens_used FROM market_jobs
               WHERE status IN ('submitted', 'challenged') AND lower(host)=?""",
            (self.host,),
        ):
            charge = charge_of(int(str(tokens)), int(str(price)), int(str(escrow)))
            f = slot(str(token))
            f["held"] += charge - charge * fee_bps // 10_000
            f["waiting"] += 1
        for token, deposit, price, tokens in self.store.query(
            "SELECT token, deposit, price, tokens FROM market_sessions WHERE status='active'"
        ):
            charge = charge_of(int(str(tokens)), int(str(price)), int(str(deposit)))
            slot(str(token))["held"] += charge - charge * fee_bps // 10_000
        return {
            token: TokenEarnings(
                token=token,
                earned_today=f["today"],
                earned_7d=f["week"],
                earned_total=f["total"],
                withdrawn_total=f["out"],
                held_in_escrow=f["held"],
                jobs_awaiting_release=f["waiting"],
            )
            for token, f in figures.items()
        }


def follower_name(chain_id: int, spec: Mapping[str, tuple[str, object]], address: str) -> str:
    """A cursor name that carries what was followed for whom: a changed contract set or key
    gets a new cursor from chain.start_block, so nothing before it is silently skipped."""
    followed = sorted(f"{n}={a.lower()}" for n, (a, _) in spec.items())
    what = json.dumps([chain_id, followed, address.lower()])
    return "main-" + hashlib.sha256(what.encode()).hexdigest()[:12]


def _settled_ref(db: sqlite3.Connection, tx_hash: str) -> str | None:
    """The job or session a credit paid for, when its settlement event came first."""
    row = db.execute(
        "SELECT job_id FROM market_jobs WHERE settled_tx=? LIMIT 1", (tx_hash,)
    ).fetchone()
    if row is not None:
        return f"job {int(row[0])}"
    row = db.execute(
        "SELECT session_id FROM market_sessions WHERE settled_tx=? LIMIT 1", (tx_hash,)
    ).fetchone()
    return f"session {int(row[0])}" if row is not None else None


def _link_credit(db: sqlite3.Connection, tx_hash: str, ref: str) -> None:
    """Name the job on a credit that was applied before its settlement event."""
    db.execute(
        "UPDATE earnings_ledger SET job_id=? WHERE tx_hash=? AND kind='credit' AND job_id IS NULL",
        (ref, tx_hash),
    )
