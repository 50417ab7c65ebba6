"""A served request's link to the job pipeline (engine/jobs): which requests the pipeline
judges, and what a run tells it as it streams, ends or is cut — the same for P2P, HTTP and
WebSocket clients. Every function is a no-op for free (allowlisted or operator) runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.inference.slots import SlotLease
from fabstir_tui.engine.inference.stream import GenerationRequest, TokenStream
from fabstir_tui.engine.jobs.archive import ArchivedJob
from fabstir_tui.engine.jobs.runs import Refusal, Replay, RunTicket
from fabstir_tui.engine.p2p.messages import (
    EndFrame,
    ErrorCode,
    JobRequest,
    TokenFrame,
    error_frame,
)
from fabstir_tui.engine.proofs.receipt import ZERO_HASH

if TYPE_CHECKING:
    from fabstir_tui.engine.events import LoadedModel
    from fabstir_tui.engine.node import Node

NOT_ALLOWLISTED = (
    "this node serves /fabstir/job for jobs it has claimed (a signed request from the job's "
    "poster) and to peers on its p2p.job_allowlist; peer {peer} is not on it and {why}"
)


@dataclass(slots=True)
class Batch:
    """What the engine produced since the last pull; `end` or `error` once it is over."""

    pieces: list[str] = field(default_factory=list)
    tokens: int = 0
    end: EndFrame | None = None
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class RunningJob:
    """One admitted request: its token stream and the batch pulls that read it."""

    stream: TokenStream
    model_name: str
    request: JobRequest
    model_sha256: str
    model: LoadedModel
    generation: GenerationRequest
    finished: bool = False
    counted: int = 0
    output: list[str] = field(default_factory=list)
    ticket: RunTicket | None = None
    lease: SlotLease | None = None  # the inference slot it holds, released at its end


def pipeline_ticket(
    node: Node, request: JobRequest, peer: str
) -> RunTicket | Replay | dict[str, Any] | None:
    """The pipeline's verdict on a request for one of its jobs, the allowlist's refusal,
    or None for an allowlisted request outside the pipeline (served for free)."""
    pipeline = node.jobs
    allowlisted = peer in node.config.p2p.job_allowlist
    if pipeline is None or (allowlisted and not pipeline.runs.knows(request)):
        if allowlisted:
            return None
        why = "this node's job pipeline is off (see the log)"
        return error_frame(ErrorCode.UNAUTHORIZED, NOT_ALLOWLISTED.format(peer=peer, why=why))
    checked = pipeline.runs.check(request)
    if isinstance(checked, Refusal):
        return error_frame(checked.code, checked.message)
    if request.auth is None:
        return error_frame(
            ErrorCode.UNAUTHORIZED,
            f"job {request.job_id} needs a request signed by its poster (field 'auth')",
        )
    return checked


def progress(node: Node, job: RunningJob, batch: Batch) -> None:
    """Tokens so far, for the Jobs screen's live preview."""
    if job.ticket is not None and node.jobs is not None:
        node.jobs.runs.progress(job.ticket.key, batch.pieces, batch.tokens)


def finished(node: Node, job: RunningJob, end: EndFrame) -> None:
    """A pipeline job's end: kept for verify, delivery recorded, submit written (the client
    already has everything it needs in the end frame)."""
    if job.ticket is None or node.jobs is None:
        return
    if end.finish_reason == "cancelled":
        cut(node, job, "the generation was cancelled")
        return
    key = job.ticket.key
    gen = job.generation
    done = ArchivedJob(
        kind=key.kind.value,
        chain_id=key.chain_id,
        contract=key.contract,
        job_id=key.job_id,
        prompt=gen.prompt or "",
        output="".join(job.output),
        model_sha256=job.model_sha256,
        receipt=end.receipt,
        generation=gen.sampler(),
        prompt_tokens=end.prompt_tokens,
        completion_tokens=end.completion_tokens,
        finished_at=time.time(),
    )
    try:
        node.jobs.runs.finish(key, done)
    except Exception as exc:  # a full disk: the run is cut, the client may retry
        node.log("error", "jobs", f"job {key.job_id}: could not record its end: {exc}")
        cut(node, job, f"its end could not be recorded: {exc}")


def past_deadline(node: Node, job: RunningJob) -> bool:
    """The job's deadline has come mid-run (chain time): stop rather than submit too late."""
    return (
        job.ticket is not None
        and node.jobs is not None
        and node.jobs.runs.past_deadline(job.ticket)
    )


def cut(node: Node, job: RunningJob, why: str) -> None:
    """The run ended without an output to submit (client gone, worker failed)."""
    if job.ticket is not None and node.jobs is not None:
        node.jobs.runs.cut(job.ticket.key, why)


def prev_receipt(node: Node, job: RunningJob) -> str:
    """What this run's receipt chains to (a session's newest receipt)."""
    jobs = node.jobs
    if job.ticket is None or jobs is None:
        return ZERO_HASH
    return jobs.runs.prev_receipt(job.ticket.key)


def replay_frames(replay: Replay) -> list[dict[str, Any]]:
    """The answer already delivered, as one token frame and the end frame with its receipt."""
    done = replay.archived
    frames: list[dict[str, Any]] = []
    if done.output:
        frames.append(TokenFrame(pieces=(done.output,), tokens=done.completion_tokens).to_frame())
    end = EndFrame(
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        finish_reason="replayed",
        receipt=done.receipt,
    )
    frames.append(end.to_frame())
    return frames
