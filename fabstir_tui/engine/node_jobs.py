"""The node's job commands (DESIGN §3, §11.7): the pipeline's start, the operator's claim,
accept, reject and verify, and the snapshots the Jobs and Proofs screens draw. A mixin of
Node, kept apart so node.py stays about the node's lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir_tui.config import Config
from fabstir_tui.engine.jobs.pipeline import JobPipeline, inactive_reason
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.views import JobCommandError, JobQuote, JobsChanged, JobView

if TYPE_CHECKING:
    from fabstir_tui.engine.jobs.proof_views import ProofView
    from fabstir_tui.engine.node import Node
    from fabstir_tui.engine.proofs.verify_report import VerifyReport


class JobCommands:
    """Job commands for Node; every operator command leaves an audit line."""

    config: Config
    _jobs: JobPipeline | None

    def _node(self) -> Node:
        """This object as the Node it is mixed into (its chain, log and audit)."""
        from fabstir_tui.engine.node import Node

        assert isinstance(self, Node)
        return self

    async def _start_jobs(self) -> None:
        """Start the job pipeline when there is a market and a node key; else say why not."""
        why = inactive_reason(self._node())
        if why is None and not self._node().chain.address:
            why = "no node key (keystore): run `fabstir-tui keys new`"
        if why is not None:
            self._node().log("info", "jobs", f"the job pipeline is off: {why}")
            return
        pipeline = JobPipeline(self._node())
        pipeline.runs.recover()
        await pipeline.start()
        self._jobs = pipeline

    @property
    def jobs(self) -> JobPipeline | None:
        """The running job pipeline, or None when the node has no market or no key."""
        return self._jobs

    def _pipeline(self, action: str, key: JobKey) -> JobPipeline:
        if self._jobs is None:
            why = inactive_reason(self._node()) or "the node has no key or has not started"
            self._node().record_action(action, str(key), f"refused: {why}")
            raise JobCommandError(f"the job pipeline is off: {why}")
        return self._jobs

    def jobs_snapshot(self) -> JobsChanged:
        """The newest market / queue / done picture (empty while the pipeline is off)."""
        if self._jobs is None:
            return JobsChanged(mode=self.config.jobs.mode)
        return self._jobs.views.snapshot()

    async def quote_job(self, key: JobKey) -> JobQuote:
        """What claiming or accepting this job would earn and cost, for the dialog."""
        from fabstir_tui.engine.jobs.quoting import quote_for

        return await quote_for(self._node(), self._pipeline("quote job", key), key)

    async def _job_command(self, action: str, key: JobKey, verb: str) -> JobView:
        pipeline = self._pipeline(action, key)
        try:
            command = {"claim": pipeline.claim, "accept": pipeline.accept}.get(
                verb, pipeline.reject
            )
            view = await command(key)
        except JobCommandError as exc:
            self._node().record_action(action, f"job {key.job_id}", f"refused: {exc}")
            raise
        self._node().record_action(action, f"job {key.job_id}", f"{view.state}: {view.detail}")
        return view

    async def claim_job(self, key: JobKey) -> JobView:
        """Claim an open market job (the operator's `c`); audited."""
        return await self._job_command("claim job", key, "claim")

    async def accept_job(self, key: JobKey) -> JobView:
        """Accept work waiting for approval (the operator's `a`); audited."""
        return await self._job_command("accept job", key, "accept")

    async def reject_job(self, key: JobKey) -> JobView:
        """Reject a market job or waiting work (the operator's `x`); audited."""
        return await self._job_command("reject job", key, "reject")

    def proofs(self, limit: int = 200) -> list[ProofView]:
        """Receipts, roots and their transactions per job, newest first (the Proofs screen)."""
        from fabstir_tui.engine.jobs.proof_views import proof_views

        return proof_views(self._jobs, limit) if self._jobs is not None else []

    async def verify_job(self, key: JobKey) -> VerifyReport:
        """Re-run a finished job against its receipt (DESIGN §11.5); audited with the verdict."""
        from fabstir_tui.engine.jobs.proof_views import verify_key

        pipeline = self._pipeline("verify job", key)
        try:
            report = await verify_key(self._node(), pipeline, key)
        except JobCommandError as exc:
            self._node().record_action("verify job", f"job {key.job_id}", f"refused: {exc}")
            raise
        self._node().record_action("verify job", f"job {key.job_id}", report.verdict)
        return report
