"""Sessions (DESIGN §3, §11.9): a client opens one with us and a deposit; we serve many
requests over P2P, each with a receipt chained to the one before, and prove the work on-chain
every `proofInterval` tokens (the proof hash is the Merkle root of the receipts it covers).

States: pending_approval → active → completed | timed_out | rejected. The operator (or the
auto policy) accepts; the client completes; a session that saw no proof for its timeout is
timed out — by us, so proven work is paid even when the client vanishes. Unproven tokens are
proven before the timeout comes near and whenever the session goes quiet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.jobs.effects import EffectEnd, key_text
from fabstir_tui.engine.jobs.policy import PolicyJob, Verdict, decide
from fabstir_tui.engine.jobs.records import Effect, JobKey, PendingEffect
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.p2p.request_auth import SignedJobRequest
from fabstir_tui.engine.proofs.merkle import merkle_root
from fabstir_tui.engine.proofs.receipt import ZERO_HASH
from fabstir_tui.engine.store import Store

if TYPE_CHECKING:
    from fabstir_tui.engine.jobs.pipeline import JobPipeline
    from fabstir_tui.engine.jobs.runs import Refusal, RunTicket
    from fabstir_tui.engine.p2p.messages import JobRequest

S = JobState
IDLE_PROOF_S = 10.0  # prove what is unproven once a session is quiet this long
TIMEOUT_MARGIN = 0.5  # …or once half its timeout has passed since the last proof
_COLUMNS = (
    "session_id, client, host, model_id, token, deposit, price, tokens, status, "
    "proof_interval, timeout, last_activity"
)


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One of our sessions as the chain tells it (market_sessions)."""

    session_id: int
    client: str
    host: str
    model_id: str
    token: str
    deposit: int
    price: int
    tokens_proven: int
    status: str  # active, completed, timed_out
    proof_interval: int
    timeout: int
    last_activity: int

    @property
    def ends_at(self) -> int:
        return self.last_activity + self.timeout


def _row(r: tuple[object, ...]) -> SessionRow:
    return SessionRow(
        session_id=int(str(r[0])),
        client=str(r[1]),
        host=str(r[2]),
        model_id=str(r[3]).lower(),
        token=str(r[4]),
        deposit=int(str(r[5])),
        price=int(str(r[6])),
        tokens_proven=int(str(r[7])),
        status=str(r[8]),
        proof_interval=int(str(r[9] or 1)),
        timeout=int(str(r[10] or 0)),
        last_activity=int(str(r[11] or 0)),
    )


def session_rows(store: Store) -> list[SessionRow]:
    return [_row(r) for r in store.query(f"SELECT {_COLUMNS} FROM market_sessions")]


def session_row(store: Store, session_id: str | int) -> SessionRow | None:
    rows = store.query(
        f"SELECT {_COLUMNS} FROM market_sessions WHERE session_id=?", (int(session_id),)
    )
    return _row(rows[0]) if rows else None


class SessionReceipts:
    """Receipts served in each session (table session_receipts) and which proof covered them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, key: JobKey, receipt_hash: str, tokens: int) -> None:
        with self.store.transaction() as db:
            row = db.execute(
                """SELECT COALESCE(MAX(seq), 0) FROM session_receipts
                   WHERE chain_id=? AND contract=? AND session_id=?""",
                (key.chain_id, key.contract, key.job_id),
            ).fetchone()
            db.execute(
                """INSERT INTO session_receipts (chain_id, contract, session_id, seq,
                     receipt_hash, tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (
                    key.chain_id,
                    key.contract,
                    key.job_id,
                    int(row[0]) + 1,
                    receipt_hash,
                    tokens,
                    time.time(),
                ),
            )

    def last_hash(self, key: JobKey) -> str:
        """The newest receipt's hash: the next one chains to it (zero for the first)."""
        rows = self.store.query(
            """SELECT receipt_hash FROM session_receipts
               WHERE chain_id=? AND contract=? AND session_id=? ORDER BY seq DESC LIMIT 1""",
            (key.chain_id, key.contract, key.job_id),
        )
        return str(rows[0][0]) if rows else ZERO_HASH

    def unproven(self, key: JobKey) -> tuple[int, list[str], int]:
        """(tokens, receipt hashes, last seq) not yet covered by a proof."""
        rows = self.store.query(
            """SELECT seq, receipt_hash, tokens FROM session_receipts
               WHERE chain_id=? AND contract=? AND session_id=? AND proof_tx IS NULL
               ORDER BY seq""",
            (key.chain_id, key.contract, key.job_id),
        )
        tokens = sum(int(str(r[2])) for r in rows)
        return tokens, [str(r[1]) for r in rows], int(str(rows[-1][0])) if rows else 0

    def mark_proven(self, key: JobKey, through_seq: int, tx_hash: str) -> None:
        with self.store.transaction() as db:
            db.execute(
                """UPDATE session_receipts SET proof_tx=? WHERE chain_id=? AND contract=?
                     AND session_id=? AND seq<=? AND proof_tx IS NULL""",
                (tx_hash, key.chain_id, key.contract, key.job_id, through_seq),
            )


class SessionWork:
    """The session half of the pipeline: sync, approval, admission, proofs and time-outs."""

    def __init__(self, pipeline: JobPipeline) -> None:
        self.pipeline = pipeline
        self.book = pipeline.book
        self.receipts = SessionReceipts(pipeline.store)
        self._last_use: dict[JobKey, float] = {}

    def key(self, session_id: str | int) -> JobKey:
        p = self.pipeline
        return JobKey(JobKind.SESSION, p.chain_id, p.contract, str(session_id))

    # --- following the chain --------------------------------------------------------------

    def sync(self) -> list[tuple[JobKey, JobState]]:
        """New sessions with us enter pending approval; settled ones follow the chain."""
        moved: list[tuple[JobKey, JobState]] = []
        pending = self.book.pending_keys()
        for row in session_rows(self.pipeline.store):
            key = self.key(row.session_id)
            record = self.book.get(key)
            if record is None:
                if row.status != "active":
                    continue
                self.book.upsert_seen(
                    key, model_id=row.model_id, client=row.client, price=str(row.price)
                )
                moved.append((key, S.PENDING_APPROVAL))
                continue
            if key in pending or record.state not in (S.PENDING_APPROVAL, S.ACTIVE):
                continue
            to = {"completed": S.COMPLETED, "timed_out": S.TIMED_OUT}.get(row.status)
            if to is not None:
                self.book.transition(key, to, detail=f"{row.status} on-chain")
                moved.append((key, to))
        return moved

    def apply_policy(self) -> None:
        """Auto mode accepts (or rejects) sessions waiting for approval; manual leaves them."""
        p = self.pipeline
        config = p.node.config.jobs
        if config.mode != "auto":
            return
        facts = p.facts()
        for record in self.book.by_state(JobKind.SESSION, {S.PENDING_APPROVAL}):
            job = PolicyJob(
                model_id=record.model_id,
                client=record.client,
                max_tokens=0,  # a session's requests are sized one by one (deposit check)
                price_per_million=int(record.price or 0),
                deadline=None,
            )
            decision = decide(job, facts, config)
            p.node.log("info", "jobs", f"policy on {key_text(record.key)}: {decision.describe()}")
            if decision.dry_run or decision.verdict == Verdict.LEAVE:
                continue
            if decision.verdict == Verdict.REJECT:
                self.book.transition(record.key, S.REJECTED, detail="; ".join(decision.reasons))
            else:
                self.book.transition(record.key, S.ACTIVE, detail="accepted by the auto policy")

    def schedule(self, chain_now: int) -> None:
        """Prove unproven work every N tokens, when quiet, or before the timeout; time out
        sessions the client abandoned so their proven work is paid."""
        pending = self.book.pending_keys()
        for record in self.book.by_state(JobKind.SESSION, {S.ACTIVE}):
            key = record.key
            row = session_row(self.pipeline.store, key.job_id)
            if row is None or key in pending or self.pipeline.runs.active(key):
                continue
            tokens, hashes, through = self.receipts.unproven(key)
            quiet = time.monotonic() - self._last_use.get(key, 0.0) >= IDLE_PROOF_S
            near_end = chain_now >= row.last_activity + row.timeout * TIMEOUT_MARGIN
            if (
                tokens
                and chain_now < row.ends_at
                and (tokens >= row.proof_interval or quiet or near_end)
            ):
                root = "0x" + merkle_root([bytes.fromhex(h[2:]) for h in hashes]).hex()
                detail = {"tokens": tokens, "proof_hash": root, "through_seq": through}
                self.book.begin_effect(key, Effect("proof", detail=detail))
            elif chain_now >= row.ends_at:
                self.book.begin_effect(key, Effect("timeout"))

    def call_for(self, pending: PendingEffect, market: Any) -> Any:
        sid = int(pending.key.job_id)
        if pending.effect.action == "proof":
            d = pending.effect.detail
            proof = bytes.fromhex(str(d["proof_hash"])[2:])
            return market.functions.submitProofOfWork(sid, int(str(d["tokens"])), proof)
        if pending.effect.action == "timeout":
            return market.functions.timeoutSession(sid)
        raise ValueError(f"unknown session effect {pending.effect.action!r}")

    def done_on_chain(self, pending: PendingEffect) -> bool:
        """Whether the chain already shows the effect (so it is not sent again)."""
        row = session_row(self.pipeline.store, pending.key.job_id)
        if row is None:
            return False
        if pending.effect.action == "timeout":
            return row.status != "active"
        return False  # a proof is not recognisable on-chain by itself: the tx hash decides

    def after(self, pending: PendingEffect, end: EffectEnd) -> None:
        key = pending.key
        if pending.effect.action == "proof" and end.ok:
            through = int(str(pending.effect.detail["through_seq"]))
            self.receipts.mark_proven(key, through, end.tx_hash or "seen on-chain")

    # --- serving --------------------------------------------------------------------------

    def check(self, request: JobRequest) -> RunTicket | Refusal:
        """A request in a session: active, our model, the deposit covers it, not timed out."""
        from fabstir_tui.engine.jobs.runs import Refusal, RunTicket

        sid = request.session_id or ""
        if not sid.isdecimal():
            return Refusal("malformed", "field 'session_id': a decimal session id")
        key = self.key(sid)
        record = self.book.get(key)
        name = key_text(key)
        if record is None:
            return Refusal("not_claimed", f"{name} is not open with this node (unknown here)")
        if record.state == S.PENDING_APPROVAL:
            return Refusal("busy", f"{name} waits for the operator's approval; retry later")
        if record.state != S.ACTIVE:
            return Refusal("not_claimed", f"{name} is {record.state}: {record.detail or ''}")
        row = session_row(self.pipeline.store, sid)
        if row is None:
            return Refusal("busy", f"{name} is not confirmed on-chain yet; retry shortly")
        wanted = request.model_id.lower()
        wanted = wanted if wanted.startswith("0x") else "0x" + wanted
        if wanted != row.model_id:
            return Refusal("model_not_served", f"{name} is for model {row.model_id}")
        if self.pipeline.now() >= row.ends_at:
            return Refusal("deadline_passed", f"{name} has timed out")
        unproven, _hashes, _seq = self.receipts.unproven(key)
        # A token covers at least one byte, so the prompt's bytes bound its token count.
        worst = row.tokens_proven + unproven + request.max_tokens + len(request.prompt.encode())
        if worst * row.price // 1_000_000 > row.deposit:
            return Refusal(
                "deposit_exhausted",
                f"{name}'s deposit does not cover this request at up to {request.max_tokens} "
                "tokens; ask for fewer tokens or open a new session",
            )
        self._last_use[key] = time.monotonic()
        return RunTicket(key, record, request.max_tokens)

    def expected_client(self, ticket: RunTicket) -> Any:
        def expected(_signed: SignedJobRequest) -> str | None:
            return ticket.record.client

        return expected

    def finished(self, key: JobKey, receipt_hash: str | None, tokens: int) -> None:
        """A request's end: its receipt joins the session's chain, to be proven."""
        self._last_use[key] = time.monotonic()
        if receipt_hash is not None:
            self.receipts.add(key, receipt_hash, tokens)
        self.pipeline.kick()
