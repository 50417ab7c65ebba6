"""The auto-approve policy: a pure decision over a job, a snapshot of the node and [jobs] config."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fabstir_tui.config import JobsSection
from fabstir_tui.engine.jobs.records import JobRecord

__all__ = ["Decision", "NodeFacts", "PolicyJob", "Verdict", "decide", "policy_job"]


class Verdict(StrEnum):
    """What happens to the job: approve it, refuse it, or leave it to the operator."""

    APPROVE = "approve"
    REJECT = "reject"
    LEAVE = "leave"


@dataclass(frozen=True)
class PolicyJob:
    """The facts of a job the rules read; None = not known yet (so auto cannot approve)."""

    model_id: str | None
    client: str | None
    max_tokens: int | None
    price_per_million: int | None
    deadline: int | None


@dataclass(frozen=True)
class NodeFacts:
    """A frozen snapshot of the node, so a decision is reproducible and testable."""

    loaded_models: frozenset[str]
    gpu_temp_c: float | None
    queue_depth: int
    now: float


@dataclass(frozen=True)
class Decision:
    """The verdict plus every failed rule in operator words; dry_run = log it, do nothing."""

    verdict: Verdict
    reasons: tuple[str, ...]
    dry_run: bool

    def describe(self) -> str:
        """One log line: what was (or would have been) done and why."""
        prefix = "dry run, would " if self.dry_run else ""
        why = "; ".join(self.reasons) if self.reasons else "every rule passes"
        return f"{prefix}{self.verdict.value}: {why}"


def policy_job(record: JobRecord) -> PolicyJob:
    """The policy's view of a book row (the row keeps price as decimal text)."""
    price = None if record.price is None else int(record.price)
    return PolicyJob(
        model_id=record.model_id,
        client=record.client,
        max_tokens=record.max_tokens,
        price_per_million=price,
        deadline=record.deadline,
    )


def _model_rule(job: PolicyJob, facts: NodeFacts) -> tuple[list[str], list[str]]:
    if job.model_id is None:
        return [], ["the model is not known yet"]
    if job.model_id in facts.loaded_models:
        return [], []
    # Not loaded is the node's moment, not the job's fault: the model may be loading, or the
    # operator may load it; so the job is left, never rejected for it.
    loaded = ", ".join(sorted(facts.loaded_models)) or "nothing"
    return [], [f"model {job.model_id} is not loaded (loaded: {loaded})"]


def _price_rule(job: PolicyJob, config: JobsSection) -> tuple[list[str], list[str]]:
    if job.price_per_million is None:
        return [], ["the price is not known yet"]
    if job.price_per_million >= config.price_floor:
        return [], []
    price, floor = job.price_per_million, config.price_floor
    return [f"price {price:,}/M is below the floor {floor:,}/M"], []


def _tokens_rule(job: PolicyJob, config: JobsSection) -> tuple[list[str], list[str]]:
    if job.max_tokens is None:
        return [], ["max tokens is not known yet"]
    if job.max_tokens <= config.max_tokens_cap:
        return [], []
    return [f"max tokens {job.max_tokens:,} is above the cap {config.max_tokens_cap:,}"], []


def _client_rule(job: PolicyJob, config: JobsSection) -> tuple[list[str], list[str]]:
    if job.client is None:
        return [], ["the client is not known yet"]
    client = job.client.lower()
    rejects: list[str] = []
    if client in config.client_deny:
        rejects.append(f"client {client} is on the deny list")
    if config.client_allow and client not in config.client_allow:
        rejects.append(f"client {client} is not on the allow list")
    return rejects, []


def _gpu_rule(facts: NodeFacts, config: JobsSection) -> list[str]:
    limit = config.gpu_temp_limit_c
    if limit is None:
        return []
    if facts.gpu_temp_c is None:
        return [f"GPU temperature is unknown (limit {limit:g} °C)"]
    if facts.gpu_temp_c < limit:
        return []
    return [f"GPU at {facts.gpu_temp_c:g} °C is not below the limit {limit:g} °C"]


def _queue_rule(facts: NodeFacts, config: JobsSection) -> list[str]:
    if facts.queue_depth < config.max_queue_depth:
        return []
    most = config.max_queue_depth
    return [f"queue holds {facts.queue_depth} jobs, the most is {most}"]


def decide(job: PolicyJob | JobRecord, facts: NodeFacts, config: JobsSection) -> Decision:
    """Apply every rule and list every failure; only auto mode approves, nothing approves late.

    Failures of what the job is (price, tokens, client) reject it; failures of the node's
    moment (model not loaded, GPU heat or unknown heat, a full queue) or unknown job facts
    leave it to the operator. A passed deadline rejects in either mode: there is nothing left
    to decide. Manual mode always leaves the rest, with the reasons auto would have used.
    """
    facts_of_job = policy_job(job) if isinstance(job, JobRecord) else job
    auto = config.mode == "auto"
    dry_run = auto and config.dry_run
    if facts_of_job.deadline is not None and facts_of_job.deadline <= facts.now:
        late = f"the deadline passed {facts.now - facts_of_job.deadline:,.0f} s ago"
        return Decision(Verdict.REJECT, (late,), dry_run)
    rejects: list[str] = []
    leaves: list[str] = []
    for rule_rejects, rule_leaves in (
        _model_rule(facts_of_job, facts),
        _price_rule(facts_of_job, config),
        _tokens_rule(facts_of_job, config),
        _client_rule(facts_of_job, config),
    ):
        rejects += rule_rejects
        leaves += rule_leaves
    leaves += _gpu_rule(facts, config) + _queue_rule(facts, config)
    reasons = tuple(rejects + leaves)
    if not auto:
        return Decision(Verdict.LEAVE, reasons, False)
    if rejects:
        return Decision(Verdict.REJECT, reasons, dry_run)
    if leaves:
        return Decision(Verdict.LEAVE, reasons, dry_run)
    return Decision(Verdict.APPROVE, (), dry_run)
