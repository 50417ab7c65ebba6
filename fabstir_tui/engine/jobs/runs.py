"""Runs of claimed jobs: who may send a job's prompt, and what its end writes.

The job protocol (and later the HTTP API) asks `check` before anything else: the job must be
claimed by us and confirmed, the model, deadline and prompt hash must match what the client
posted on-chain. Only then is the client's signature checked (signer = the job's poster) and
the run started. Its end writes delivered (output hash, receipt root, tokens) and then
submitted with the submit tx as a pending effect — both before anything is sent.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.jobs.archive import ArchivedJob
from fabstir_tui.engine.jobs.effects import die_at, key_text
from fabstir_tui.engine.jobs.market_sync import market_row
from fabstir_tui.engine.jobs.records import Effect, JobKey, JobRecord
from fabstir_tui.engine.jobs.sessions import session_row
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.p2p.request_auth import AuthDomain, SignedJobRequest, prompt_hash
from fabstir_tui.engine.proofs.merkle import merkle_root
from fabstir_tui.engine.proofs.receipt import ZERO_HASH, output_hash, parse_receipt, receipt_hash

if TYPE_CHECKING:
    from fabstir_tui.engine.jobs.pipeline import JobPipeline
    from fabstir_tui.engine.p2p.messages import JobRequest

S = JobState
PREVIEW_CHARS = 2000
_MARKET = frozenset({S.SEEN, S.PENDING_APPROVAL, S.APPROVED})
_DONE = frozenset({S.DELIVERED, S.SUBMITTED, S.CHALLENGED, S.RELEASED, S.REFUNDED})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request for a job is not served: an error code a client can act on, a sentence."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class RunTicket:
    """A request that may run: the job's book row and the token budget it allows."""

    key: JobKey
    record: JobRecord
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Replay:
    """A job already delivered, asked again (its first answer was cut off by a crash or a
    dropped connection): the archived output and receipt are sent again, nothing re-runs."""

    key: JobKey
    record: JobRecord
    archived: ArchivedJob


@dataclass(slots=True)
class RunProgress:
    """A run in flight, for the Jobs screen: tokens so far and the output's tail."""

    started: float = field(default_factory=time.monotonic)
    tokens: int = 0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=400))

    @property
    def tokens_per_s(self) -> float | None:
        elapsed = time.monotonic() - self.started
        return self.tokens / elapsed if self.tokens and elapsed > 0 else None

    @property
    def preview(self) -> str:
        return "".join(self.tail)[-PREVIEW_CHARS:]


class JobRuns:
    """Admission and bookkeeping of runs; the pipeline owns one."""

    def __init__(self, pipeline: JobPipeline) -> None:
        self.pipeline = pipeline
        self.book = pipeline.book
        self._running: dict[JobKey, RunProgress] = {}
        self._queued: dict[JobKey, int] = {}
        # The one request per job or session that may queue for a slot now: two requests
        # checked at once would both pass `check` (it changes nothing) and both run.
        self._holders: dict[JobKey, object] = {}

    def key(self, job_id: str) -> JobKey:
        return JobKey(JobKind.OPEN, self.pipeline.chain_id, self.pipeline.contract, job_id)

    def knows(self, request: JobRequest) -> bool:
        """True when the request names a job or session in our book (ours to judge)."""
        if request.session_id is not None:
            sid = request.session_id
            return sid.isdecimal() and self.book.get(self.pipeline.sessions.key(sid)) is not None
        job_id = request.job_id
        if job_id is None or not job_id.isdecimal():
            return False
        return self.book.get(self.key(job_id)) is not None

    def prev_receipt(self, key: JobKey) -> str:
        """What a run's receipt chains to: a session's newest receipt; zero for a job."""
        if key.kind == JobKind.SESSION:
            return self.pipeline.sessions.receipts.last_hash(key)
        return ZERO_HASH

    def active(self, key: JobKey) -> bool:
        return key in self._running or key in self._queued or key in self._holders

    def hold(self, key: JobKey, holder: object) -> Refusal | None:
        """Let `holder` alone queue and run for this job or session, or say it is busy."""
        if key in self._running or self._holders.get(key, holder) is not holder:
            return Refusal("busy", f"{key_text(key)} is serving another request; retry later")
        self._holders[key] = holder
        return None

    def let_go(self, key: JobKey, holder: object) -> None:
        """`holder` left before its run started: the job or session takes requests again."""
        if self._holders.get(key) is holder:
            del self._holders[key]
            self.queued(key, None)

    def queued(self, key: JobKey, position: int | None) -> None:
        """Where a request waits for an inference slot (None: no longer waiting)."""
        if position is None:
            self._queued.pop(key, None)
        else:
            self._queued[key] = position
        self.pipeline.publish()

    def position(self, key: JobKey) -> int | None:
        return self._queued.get(key)

    def price_of(self, ticket: RunTicket) -> int:
        """What the request pays per million tokens: the slot queue serves higher first."""
        if ticket.key.kind == JobKind.SESSION:
            session = session_row(self.pipeline.store, ticket.key.job_id)
            return session.price if session is not None else 0
        job = market_row(self.pipeline.store, ticket.key.job_id)
        return (job.price or 0) if job is not None else 0

    def progress_of(self, key: JobKey) -> RunProgress | None:
        return self._running.get(key)

    def check(self, request: JobRequest) -> RunTicket | Replay | Refusal:
        """Everything but the signature, cheapest first; nothing changes state here."""
        if request.job_id is None:
            ticket = self.pipeline.sessions.check(request)
            if isinstance(ticket, RunTicket) and ticket.key in self._running:
                return Refusal("busy", f"{key_text(ticket.key)} is serving a request already")
            return ticket
        if not request.job_id.isdecimal():
            return Refusal("malformed", "field 'job_id': a decimal job id")
        key = self.key(request.job_id)
        record = self.book.get(key)
        name = key_text(key)
        if record is None:
            return Refusal("not_claimed", f"{name} is not claimed by this node (unknown here)")
        state = record.state
        if state in _MARKET:
            return Refusal("not_claimed", f"{name} is not claimed by this node: claim it first")
        if state == S.LOST:
            return Refusal("not_claimed", f"{name} was claimed by another host ({record.detail})")
        if state == S.RUNNING:
            return Refusal("busy", f"{name} is already running (one request per job)")
        if state in _DONE:
            archived = self.pipeline.archive.get(
                key.kind.value, key.chain_id, key.contract, key.job_id
            )
            if archived is not None and archived.prompt == request.prompt:
                return Replay(key, record, archived)
            return Refusal("already_delivered", f"{name} was already delivered")
        if state != S.CLAIMED:
            return Refusal("not_claimed", f"{name} is {state}: {record.detail or 'closed'}")
        if self.book.has_pending(key):
            return Refusal("busy", f"{name}'s claim is not confirmed yet; retry in a few seconds")
        wanted = request.model_id.lower()
        wanted = wanted if wanted.startswith("0x") else "0x" + wanted
        if wanted != record.model_id:
            return Refusal(
                "model_not_served", f"{name} was posted for model {record.model_id}, not {wanted}"
            )
        if record.deadline is not None and record.deadline <= self.pipeline.now():
            return Refusal("deadline_passed", f"{name}'s deadline has passed")
        got = prompt_hash(request.prompt)
        if got != (record.prompt_hash or "").lower():
            return Refusal(
                "prompt_mismatch",
                f"the prompt's keccak256 is {got}, but {name} was posted with {record.prompt_hash}",
            )
        budget = min(request.max_tokens, record.max_tokens or request.max_tokens)
        return RunTicket(key, record, budget)

    def past_deadline(self, ticket: RunTicket) -> bool:
        """An open job whose deadline has come while it runs: its submit would revert."""
        deadline = ticket.record.deadline
        return (
            ticket.key.kind == JobKind.OPEN
            and deadline is not None
            and (deadline <= self.pipeline.now())
        )

    def expected_signer(self, ticket: RunTicket | Replay) -> Any:
        """The auth check's hook: the job's poster is the only one who may ask for it."""

        def expected(_signed: SignedJobRequest) -> str | None:
            return ticket.record.client

        return expected

    def start(self, ticket: RunTicket) -> None:
        """claimed → running, written before the first token is produced (a session stays
        active: its requests come and go)."""
        self._queued.pop(ticket.key, None)
        self._holders.pop(ticket.key, None)  # running now: `_running` refuses others
        if ticket.key.kind == JobKind.OPEN:
            self.book.transition(ticket.key, S.RUNNING, detail="running")
        self._running[ticket.key] = RunProgress()
        self.pipeline.publish()

    def progress(self, key: JobKey, pieces: list[str], tokens: int) -> None:
        run = self._running.get(key)
        if run is None:
            return
        run.tokens += tokens
        run.tail.extend(pieces)
        self.pipeline.publish()

    def cut(self, key: JobKey, why: str) -> None:
        """The run ended without an output to submit: back to claimed, the client may retry."""
        self._running.pop(key, None)
        record = self.book.get(key)
        if record is not None and record.state == S.RUNNING and key.kind == JobKind.OPEN:
            self.book.transition(key, S.CLAIMED, detail=f"run cut: {why}; the client may retry")
        self.pipeline.node.log("warning", "jobs", f"{key_text(key)}: run cut: {why}")
        self.pipeline.publish()

    def finish(self, key: JobKey, done: ArchivedJob) -> None:
        """Kept for `verify`, then delivered (with the commitments), then submitted with the
        submit tx pending — each written before the next step."""
        run = self._running.pop(key, None)
        if key.kind == JobKind.SESSION:
            self._session_finished(key, done)
            return
        record = self.book.get(key)
        if record is None or record.state != S.RUNNING:
            return
        receipt = done.receipt
        output, prompt_tokens, completion_tokens = (
            done.output,
            done.prompt_tokens,
            done.completion_tokens,
        )
        self.pipeline.archive.put(done)
        if receipt is None:
            self.book.transition(
                key, S.CLAIMED, detail="no receipt could be signed (see the log); not submitted"
            )
            self.pipeline.publish()
            return
        domain = AuthDomain.from_config(self.pipeline.node.config)
        leaf = receipt_hash(parse_receipt(receipt).receipt, domain)
        root = "0x" + merkle_root([leaf]).hex()
        used = min(prompt_tokens + completion_tokens, record.max_tokens or 0)
        out_hash = output_hash(output)
        seconds = time.monotonic() - run.started if run is not None else 0.0
        self.book.transition(
            key,
            S.DELIVERED,
            output_hash=out_hash,
            receipt_root=root,
            tokens_used=used,
            detail=f"delivered {completion_tokens} tokens in {seconds:.1f} s",
        )
        die_at("after_delivered")
        self.submit(key)

    def _session_finished(self, key: JobKey, done: ArchivedJob) -> None:
        leaf = None
        if done.receipt is not None:
            domain = AuthDomain.from_config(self.pipeline.node.config)
            leaf = "0x" + receipt_hash(parse_receipt(done.receipt).receipt, domain).hex()
        else:
            self.pipeline.node.log(
                "warning", "jobs", f"{key_text(key)}: a request ended without a receipt"
            )
        self.pipeline.sessions.finished(key, leaf, done.prompt_tokens + done.completion_tokens)
        self.pipeline.publish()

    def submit(self, key: JobKey) -> None:
        """delivered → submitted, the submit tx written as pending first."""
        record = self.book.get(key)
        if record is None or record.state != S.DELIVERED:
            return
        detail = {
            "tokens_used": record.tokens_used,
            "output_hash": record.output_hash,
            "receipt_root": record.receipt_root,
        }
        self.book.transition(
            key, S.SUBMITTED, effect=Effect("submit", detail=detail), detail="submitting"
        )
        self.pipeline.kick()
        self.pipeline.publish()

    def recover(self) -> None:
        """After a restart: a run that was in flight is cut (its client is gone); a delivered
        job whose submit was not yet written gets it now."""
        for record in self.book.by_state(JobKind.OPEN, {S.RUNNING}):
            self.book.transition(
                record.key, S.CLAIMED, detail="the node restarted during the run; retry"
            )
        for record in self.book.by_state(JobKind.OPEN, {S.DELIVERED}):
            self.submit(record.key)
