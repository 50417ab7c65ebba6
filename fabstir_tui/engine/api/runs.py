"""The HTTP API's side of a run: find the model, admit the request (operator or paid), wait
for an inference slot, pull the tokens, wind up. The work is the shared RequestRunner's
(engine/serving), so paid HTTP runs are judged, receipted and submitted exactly like P2P
runs; this module turns its frames into API errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.api.auth import Credentials, admit_paid, paid_shape
from fabstir_tui.engine.api.errors import ApiError, refusal
from fabstir_tui.engine.inference.registry import model_key
from fabstir_tui.engine.inference.request_text import EMPTY_PROMPT
from fabstir_tui.engine.inference.stream import GenerationRequest
from fabstir_tui.engine.jobs.runs import Replay, RunTicket
from fabstir_tui.engine.p2p.messages import JobRequest
from fabstir_tui.engine.serving.links import Batch, RunningJob
from fabstir_tui.engine.serving.runner import RequestRunner
from fabstir_tui.engine.serving.turns import Pending

if TYPE_CHECKING:
    from fabstir_tui.engine.api.shapes import Ask
    from fabstir_tui.engine.events import LoadedModel
    from fabstir_tui.engine.node import Node

CONTEXT_REFUSAL = "but the context holds"  # the worker's words for a prompt that cannot fit


@dataclass(frozen=True, slots=True)
class Located:
    """A loaded model a request named: its path, name, id (None while hashing) and worker."""

    path: str
    name: str
    sha256: str | None
    model: LoadedModel

    @property
    def model_id(self) -> str:
        """What responses call the model: its 0x SHA-256, or its name while still hashing."""
        return "0x" + self.sha256 if self.sha256 else self.name


def loaded_models(node: Node) -> list[Located]:
    """Every loaded model with its registry name and id (the /v1/models list)."""
    on_disk = {model_key(m.path): m for m in node.list_models()}
    found = []
    for loaded in node.loaded_models():
        info = on_disk.get(model_key(loaded.path))
        name = info.name if info is not None else loaded.name
        sha = info.sha256 if info is not None else None
        found.append(Located(loaded.path, name, sha, loaded))
    return found


def locate(node: Node, wanted: str) -> Located:
    """The loaded model with this id (0x SHA-256 or bare hex) or name, or a 404."""
    key = wanted.lower().removeprefix("0x")
    for located in loaded_models(node):
        names = {located.name, located.model.name, Path(located.path).name}
        if (located.sha256 is not None and key == located.sha256) or wanted in names:
            return located
    raise ApiError(
        404,
        "model_not_found",
        f"no loaded model has the id or name {wanted[:80]!r}; see /v1/models",
    )


class HttpJobs:
    """The shared request runner, driven by HTTP (and WebSocket) handlers."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.runner = RequestRunner(node)

    async def admit(self, ask: Ask, caller: Credentials) -> tuple[Pending | Replay, Located]:
        """A request that may wait for a slot (or a delivered job's replay), or an ApiError
        saying why not."""
        located = locate(self.node, ask.model)
        cap = self.node.config.jobs.max_tokens_cap
        max_tokens = min(ask.max_tokens or 256, cap)
        request = JobRequest(
            model_id=located.sha256 or "",
            prompt=ask.prompt or "",
            max_tokens=max_tokens,
            job_id=ask.job_id,
            session_id=ask.session_id,
            temperature=ask.temperature,
            seed=ask.seed,
            auth=caller.paid_auth,
        )
        ticket: RunTicket | None = None
        if caller.paid_auth is not None:
            paid_shape(ask)
            if located.sha256 is None:
                raise ApiError(503, "model_hashing", f"{located.name} is still being hashed")
            checked = await admit_paid(self.runner, request)
            if isinstance(checked, Replay):
                self.node.log("info", "jobs", f"job {checked.key.job_id}: its answer sent again")
                return checked, located
            ticket = checked
            max_tokens = ticket.max_tokens
        defaults = GenerationRequest(prompt="")
        generation = GenerationRequest(
            prompt=ask.prompt,
            messages=ask.messages,
            max_tokens=max_tokens,
            temperature=defaults.temperature if ask.temperature is None else ask.temperature,
            seed=self.runner.seed_for(request),
            stop=ask.stop,
        )
        jobs = self.node.jobs
        price = jobs.runs.price_of(ticket) if ticket is not None and jobs is not None else 0
        pending = Pending(
            request,
            located.path,
            located.name,
            located.sha256 or "",
            located.model,
            generation,
            ticket,
            price,
        )
        return pending, located

    async def wait_for_slot(
        self, pending: Pending, on_position: Callable[[int], Any] | None = None
    ) -> RunningJob:
        """The started run once a slot is free; positions (and heartbeats) go to
        `on_position` meanwhile. Cancelled (the client left): the queue is left cleanly."""
        job: RunningJob | None = None
        try:
            while True:
                turn = await self.runner.next_turn(pending)
                if isinstance(turn, RunningJob):
                    job = turn
                    return job
                if isinstance(turn, dict):
                    raise refusal(str(turn.get("code", "internal")), str(turn.get("message")))
                if on_position is not None:
                    await on_position(turn)
        finally:
            if job is None:
                await _shielded(self.runner.abandon(pending))

    async def batches(self, job: RunningJob) -> AsyncGenerator[Batch, None]:
        """The run's batches, the last one with its end (usage, receipt) or its error; the
        run is wound up (cancelled if unfinished, slot released) however the caller stops."""
        try:
            while True:
                batch = await self.runner.next_batch(job)
                yield batch
                if batch.end is not None or batch.error is not None:
                    return
        finally:
            await _shielded(self.runner.wind_up(job))


def batch_error(batch: Batch) -> ApiError:
    """A run's failure as the HTTP error: a prompt longer than the context is the client's."""
    error = batch.error or {}
    message = str(error.get("message", "the generation failed"))
    if CONTEXT_REFUSAL in message:
        return ApiError(400, "context_length_exceeded", message)
    if EMPTY_PROMPT in message:
        return ApiError(400, "empty_prompt", message)
    if error.get("code") == "deadline_passed":
        return refusal("deadline_passed", message)
    return ApiError(500, str(error.get("code", "internal")), message)


async def _shielded(coro: Any) -> None:
    """Clean-up that must finish even while the handler is being cancelled; the cancel still
    passes through once it is done (or after a few seconds)."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task}, timeout=5)
        raise
