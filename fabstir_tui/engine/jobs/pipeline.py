"""JobPipeline: the job loop of DESIGN §3 — market, approval, claim, run, submit, release.

One task follows the chain mirror (market_sync), applies the auto policy, gives back claims
whose prompt never came (§11.8), schedules releases after the dispute window, and drives every
pending on-chain effect (effects.py) — including those a crash left behind, so a restart
resumes each job where it stood. Operator commands (claim, accept, reject) and the job
protocol's runs (runs.py) write the book first and then act.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.chain.txerrors import TxError
from fabstir_tui.engine.jobs.archive import archive_for
from fabstir_tui.engine.jobs.book import JobBook
from fabstir_tui.engine.jobs.effects import DONE_WHEN, EffectDriver, EffectEnd, key_text
from fabstir_tui.engine.jobs.market_sync import MarketSync, market_row
from fabstir_tui.engine.jobs.policy import NodeFacts, Verdict, decide
from fabstir_tui.engine.jobs.records import Effect, JobKey, JobRecord, PendingEffect
from fabstir_tui.engine.jobs.runs import JobRuns
from fabstir_tui.engine.jobs.sessions import SessionWork
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.jobs.view_builder import ViewBuilder
from fabstir_tui.engine.jobs.views import JobCommandError, JobsChanged, JobView

if TYPE_CHECKING:
    from fabstir_tui.engine.node import Node

S = JobState
TICK_S = 1.0
PUBLISH_MIN_S = 0.25
RELEASE_RETRY_S = 30.0
SWEEP_EVERY_S = 3600.0
BUSY_STATES = frozenset({S.APPROVED, S.CLAIMED, S.RUNNING, S.DELIVERED})


def inactive_reason(node: Node) -> str | None:
    """Why the pipeline cannot run on this node's config, or None when it can."""
    chain = node.config.chain
    if not chain.enabled:
        return "no chain configured (chain.rpc_urls): the job pipeline needs the marketplace"
    if not chain.job_marketplace:
        return "chain.job_marketplace is not set: there is no market to take jobs from"
    return None


class JobPipeline:
    """Owns the book and the loop; the node exposes its commands and snapshot."""

    def __init__(self, node: Node) -> None:
        self.node = node
        store = node.store
        assert store is not None
        self.store = store
        self.book = JobBook(store)
        chain = node.config.chain
        self.chain_id = chain.chain_id
        self.contract = chain.job_marketplace.lower()
        self.host = node.chain.address
        self.sync = MarketSync(self.book, store, self.chain_id, self.contract, self.host)
        self.archive = archive_for(node.config.paths.data_dir)
        self._swept_at = -float("inf")
        self.sessions = SessionWork(self)
        self.runs = JobRuns(self)
        self.views = ViewBuilder(self)
        self._driving: dict[JobKey, asyncio.Task[None]] = {}
        self._release_after: dict[JobKey, float] = {}
        self._leave_reasons: dict[JobKey, str] = {}
        self._window_s: int | None = None
        self._chain_time = 0
        self._timed_head: int | None = None
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._last_publish = 0.0
        self._publish_handle: asyncio.TimerHandle | None = None
        self.snapshot = JobsChanged(mode=node.config.jobs.mode)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        from fabstir_tui.engine.chain.events import ChainLogApplied

        self._sub = self.node.bus.subscribe(ChainLogApplied, maxsize=10_000)
        self._task = asyncio.create_task(self._run(), name="job-pipeline")

    async def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
        tasks = [t for t in (self._task, *self._driving.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._publish_handle is not None:
            self._publish_handle.cancel()

    def kick(self) -> None:
        """Run a round now (a chain event, a command, a finished run)."""
        self._kick.set()

    async def _run(self) -> None:
        pump = asyncio.create_task(self._pump())
        try:
            while True:
                try:
                    await self._tick()
                except (TxError, OSError) as exc:  # the RPC is away: next round
                    self.node.log("warning", "jobs", f"job round incomplete: {exc}")
                except Exception as exc:  # our bug: say it, keep the loop alive
                    self.node.log("error", "jobs", f"job round failed: {exc!r}")
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK_S):
                        await self._kick.wait()
        finally:
            pump.cancel()

    async def _pump(self) -> None:
        async for event in self._sub:
            if getattr(event, "contract", "") == "JobMarketplace":
                self._kick.set()

    # --- one round ------------------------------------------------------------------------

    def served_models(self) -> set[str]:
        """0x-SHA-256 ids of the GGUF files on this node (hashed), the market's filter."""
        return {"0x" + m.sha256 for m in self.node.list_models() if m.sha256 and not m.error}

    def now(self) -> int:
        """Chain time as far as we know it: tests move the devnet's clock ahead of ours."""
        return max(int(time.time()), self._chain_time)

    async def _sweep(self) -> None:
        """§11.15: prompts and outputs are kept only as long as verify needs them."""
        if time.monotonic() - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = time.monotonic()
        days = self.node.config.jobs.retention_days
        removed = await asyncio.to_thread(self.archive.sweep, days * 86_400)
        if removed:
            self.node.log("info", "jobs", f"removed {removed} archived jobs older than {days:g} d")

    async def _tick(self) -> None:
        await self._sweep()
        await self._read_chain_time()
        result = self.sync.run(self.served_models(), self.now())
        for key in result.new:
            record = self.book.get(key)
            if record is not None:
                self.node.log("info", "jobs", self._seen_line(record))
        for key, state in [*result.moved, *self.sessions.sync()]:
            self.node.log("info", "jobs", f"{key_text(key)} is now {state}")
            self._release_after.pop(key, None)
        self._apply_policy()
        self.sessions.apply_policy()
        self._give_back_late_claims()
        self._schedule_releases()
        self.sessions.schedule(self.now())
        self._driving = {k: t for k, t in self._driving.items() if not t.done()}
        for pending in self.book.pending_effects():
            self._ensure_drive(pending)
        self.publish()

    async def _read_chain_time(self) -> None:
        """The newest block's time, read once per new head the follower has seen (not every
        round: a quiet chain costs no RPC)."""
        pool = self.node.chain.pool
        if pool is None:
            return
        follower = self.node.chain.follower
        head = follower.head if follower is not None else None
        if head is not None and head == self._timed_head and self._window_s is not None:
            return
        w3 = pool.web3()
        latest = await w3.eth.get_block("latest")
        self._chain_time = int(latest["timestamp"])
        self._timed_head = head
        if self._window_s is None:
            contracts = self.node.chain.contracts
            self._window_s = await contracts.immutable(w3, "JobMarketplace", "disputeWindow")

    def _seen_line(self, record: JobRecord) -> str:
        return (
            f"job {record.key.job_id} posted for model {str(record.model_id)[:10]}… "
            f"max {record.max_tokens} tokens at ≤ {record.price}/M"
        )

    def facts(self) -> NodeFacts:
        """The policy's snapshot of this node."""
        loaded = {model.path for model in self.node.loaded_models()}
        ids = {"0x" + m.sha256 for m in self.node.list_models() if m.sha256 and m.path in loaded}
        gpu = self.node.telemetry.latest_gpu()
        temps = [d.temperature_c for d in gpu.devices if d.temperature_c is not None] if gpu else []
        busy = sum(1 for r in self.book.queue() if r.state in BUSY_STATES)
        return NodeFacts(
            loaded_models=frozenset(ids),
            gpu_temp_c=max(temps) if temps else None,
            queue_depth=busy,
            now=float(self.now()),
        )

    def _apply_policy(self) -> None:
        """Auto mode claims what the rules approve; manual mode only says why it waits."""
        config = self.node.config.jobs
        if config.mode != "auto":
            return
        facts = self.facts()
        for record in self.book.market(self.served_models(), self.now()):
            decision = decide(record, facts, config)
            line = decision.describe()
            if self._leave_reasons.get(record.key) == line:
                continue
            self._leave_reasons[record.key] = line
            self.node.log("info", "jobs", f"policy on {key_text(record.key)}: {line}")
            if decision.dry_run or decision.verdict == Verdict.LEAVE:
                continue
            if decision.verdict == Verdict.REJECT:
                self.book.transition(record.key, S.REJECTED, detail="; ".join(decision.reasons))
                continue
            if self.node.chain_refusal() is not None:
                continue  # locked key: leave it in the market, say nothing more
            self._begin_claim(record, "approved by the auto policy")
            facts = self.facts()

    def _give_back_late_claims(self) -> None:
        """§11.8: a claim whose prompt did not come within jobs.prompt_delivery_s is given back
        (escrow stays with the client); the operator sees it and the gas it cost."""
        limit = self.node.config.jobs.prompt_delivery_s
        pending = self.book.pending_keys()
        for record in self.book.by_state(JobKind.OPEN, {S.CLAIMED}):
            if record.key in pending or self.runs.active(record.key):
                continue
            if time.time() - record.updated_at < limit:
                continue
            self.node.log(
                "warning",
                "jobs",
                f"{key_text(record.key)}: no prompt within {limit:g} s of the claim; "
                "giving it back",
            )
            self.book.transition(
                record.key,
                S.UNCLAIMED,
                effect=Effect("unclaim"),
                detail=f"the client sent no prompt within {limit:g} s",
            )

    def _schedule_releases(self) -> None:
        """Submitted jobs whose dispute window has ended get a release tx (anyone may send it;
        we do, so the payment does not wait for the client)."""
        if self._window_s is None:
            return
        pending = self.book.pending_keys()
        for record in self.book.by_state(JobKind.OPEN, {S.SUBMITTED}):
            row = market_row(self.store, record.key.job_id)
            if row is None or row.status != "submitted" or row.submitted_at is None:
                continue
            if record.key in pending or self._chain_time < row.submitted_at + self._window_s:
                continue
            if time.monotonic() < self._release_after.get(record.key, 0.0):
                continue
            self.book.begin_effect(record.key, Effect("release"))

    # --- effects --------------------------------------------------------------------------

    def _ensure_drive(self, pending: PendingEffect) -> asyncio.Task[None] | None:
        task = self._driving.get(pending.key)
        if task is not None and not task.done():
            return task
        sender = self.node.chain.sender
        if sender is None or self.node.chain_refusal() is not None:
            return None  # locked or read-only: it stays pending until the key is unlocked
        market = self.node.chain.contracts.contract(sender.w3, "JobMarketplace")
        driver = EffectDriver(
            self.book, market, self.host, lambda p: self.sessions.call_for(p, market)
        )
        task = asyncio.create_task(self._drive(driver, sender, pending))
        self._driving[pending.key] = task
        return task

    def _done_on_chain(self, pending: PendingEffect) -> bool:
        """Whether the chain already shows this effect happened (then it is not sent)."""
        if pending.key.kind == JobKind.SESSION:
            return self.sessions.done_on_chain(pending)
        row = market_row(self.store, pending.key.job_id)
        return row is not None and DONE_WHEN[pending.effect.action](row, self.host.lower())

    async def _drive(self, driver: EffectDriver, sender: Any, pending: PendingEffect) -> None:
        try:
            end = await driver.drive(sender, pending, lambda: self._done_on_chain(pending))
        except TxError as exc:  # RPC away, receipt timeout: still pending, next round retries
            self.node.log("warning", "jobs", f"{key_text(pending.key)}: {exc}; will retry")
            return
        self._after(pending, end)
        self.kick()

    def _after(self, pending: PendingEffect, end: EffectEnd) -> None:
        key, action = pending.key, pending.effect.action
        self.book.effect_done(key, end.result())
        tx = f" (tx {end.tx_hash})" if end.tx_hash else ""
        if key.kind == JobKind.SESSION:
            level: Any = "info" if end.ok else "warning"
            said = "done" if end.ok else f"failed: {end.error}"
            self.node.log(level, "jobs", f"{key_text(key)}: {action} {said}{tx}")
            self.sessions.after(pending, end)
            self.publish()
            return
        if end.ok:
            self.node.log("info", "jobs", f"{key_text(key)}: {action} done{tx}")
            if action == "release":  # the mirror catches up soon: do not begin another
                self._release_after[key] = time.monotonic() + RELEASE_RETRY_S
            if action == "claim":
                limit = self.node.config.jobs.prompt_delivery_s
                self.book.note(key, detail=f"waiting for the client's prompt (≤ {limit:g} s)")
            self.publish()
            return
        self.node.log("warning", "jobs", f"{key_text(key)}: {action} failed{tx}: {end.error}")
        row = market_row(self.store, key.job_id)
        if action == "claim":
            host = row.host if row is not None else ""
            if host and host.lower() != self.host.lower():
                self.book.transition(key, S.LOST, detail=f"claimed first by {host}")
            else:
                self.book.transition(key, S.FAILED, detail=f"claim failed: {end.error}")
        elif action == "submit":
            late = row is not None and row.deadline <= self.now()
            to = S.EXPIRED if late else S.FAILED
            self.book.transition(key, to, detail=f"submit failed: {end.error}")
        elif action == "release":
            self._release_after[key] = time.monotonic() + RELEASE_RETRY_S
        self.publish()

    async def wait_effect(self, key: JobKey) -> None:
        """Let the key's effect (if any) run to its end: for commands that report the result."""
        for pending in self.book.pending_effects():
            if pending.key == key:
                task = self._ensure_drive(pending)
                if task is not None:
                    await asyncio.shield(task)

    # --- operator commands ----------------------------------------------------------------

    def _begin_claim(self, record: JobRecord, why: str) -> None:
        if record.state != S.APPROVED:
            self.book.transition(record.key, S.APPROVED, detail=why)
        self.book.transition(record.key, S.CLAIMED, effect=Effect("claim"), detail="claiming")
        self.kick()

    def _record(self, key: JobKey) -> JobRecord:
        record = self.book.get(key)
        if record is None:
            raise JobCommandError(f"{key_text(key)} is not in the job book")
        return record

    async def claim(self, key: JobKey) -> JobView:
        """Claim a market job now: refused with the chain's reason before anything is signed
        (price above the client's maximum, already claimed, key locked); else sent and mined."""
        record = self._record(key)
        if record.state not in (S.SEEN, S.PENDING_APPROVAL, S.APPROVED):
            raise JobCommandError(f"{key_text(key)} is {record.state}, not open for a claim")
        refusal = self.node.chain_refusal()
        if refusal is not None:
            raise JobCommandError(refusal)
        sender = self.node.chain.sender
        assert sender is not None
        market = self.node.chain.contracts.contract(sender.w3, "JobMarketplace")
        try:
            await sender.preview(market.functions.claimJob(int(key.job_id)))
        except TxError as exc:
            raise JobCommandError(f"cannot claim {key_text(key)}: {exc}") from None
        self._begin_claim(record, "claimed by the operator")
        await self.wait_effect(key)
        return self.views.view(self._record(key))

    async def accept(self, key: JobKey) -> JobView:
        """Accept work addressed to us (pending approval); an open job is claimed instead."""
        record = self._record(key)
        if record.key.kind == JobKind.OPEN:
            return await self.claim(key)
        if record.state != S.PENDING_APPROVAL:
            raise JobCommandError(f"{key_text(key)} is {record.state}, not waiting for approval")
        self.book.transition(key, S.ACTIVE, detail="accepted by the operator")
        self.publish()
        return self.views.view(self._record(key))

    async def reject(self, key: JobKey) -> JobView:
        """Turn down a market job or work waiting for approval; nothing is sent on-chain."""
        record = self._record(key)
        if record.state not in (S.SEEN, S.PENDING_APPROVAL, S.APPROVED):
            raise JobCommandError(
                f"{key_text(key)} is {record.state}; only waiting work is rejected"
            )
        self.book.transition(key, S.REJECTED, detail="rejected by the operator")
        self.publish()
        return self.views.view(self._record(key))

    # --- snapshot -------------------------------------------------------------------------

    def publish(self) -> None:
        """Rebuild the snapshot and put it on the bus, at most 1/PUBLISH_MIN_S times a second."""
        wait = self._last_publish + PUBLISH_MIN_S - time.monotonic()
        if wait > 0:
            if self._publish_handle is None:
                loop = asyncio.get_running_loop()
                self._publish_handle = loop.call_later(wait, self._publish_now)
            return
        self._publish_now()

    def _publish_now(self) -> None:
        self._publish_handle = None
        self._last_publish = time.monotonic()
        self.snapshot = self.views.snapshot()
        self.node.bus.publish(self.snapshot)
