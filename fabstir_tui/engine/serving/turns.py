"""Waiting for an inference slot (DESIGN §11.10), for every kind of client (asyncio side).

An admitted request becomes a `Pending`: it joins the model's slot queue (price first, then
age) and the protocol pulls turns from it — each turn is either its new position in the
queue (sent to the client as a ``queued`` frame, and repeated as a heartbeat so a patient
client's read timeout does not fire) or the started run once a slot is free. A client that
leaves while queued leaves the queue; one that leaves just as its run started has the run
cancelled and the slot handed on.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.inference.slots import SlotLease
from fabstir_tui.engine.inference.stream import GenerationRequest, InferenceError
from fabstir_tui.engine.jobs.runs import RunTicket
from fabstir_tui.engine.p2p.messages import ErrorCode, JobRequest, error_frame
from fabstir_tui.engine.serving.links import RunningJob

if TYPE_CHECKING:
    from fabstir_tui.engine.events import LoadedModel
    from fabstir_tui.engine.node import Node

HEARTBEAT_S = 5.0


@dataclass(slots=True)
class Pending:
    """An admitted request, waiting for a slot: what to start once it has one."""

    request: JobRequest
    path: str
    name: str
    sha256: str
    model: LoadedModel
    generation: GenerationRequest
    ticket: RunTicket | None
    price: int  # per million tokens: the queue's first order
    positions: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    position: int = 0
    acquiring: asyncio.Future[SlotLease] | None = None
    job: RunningJob | None = None


def _told(node: Node, pending: Pending) -> Any:
    """The slot queue's position callback: the client's frame and the Jobs screen both see it."""

    def on_position(position: int) -> None:
        pending.position = position
        pending.positions.put_nowait(position)
        if pending.ticket is not None and node.jobs is not None:
            node.jobs.runs.queued(pending.ticket.key, position)

    return on_position


async def next_turn(node: Node, pending: Pending) -> int | RunningJob | dict[str, Any]:
    """The request's position while it waits, its started run, or an error frame."""
    if pending.acquiring is None:
        queue = node.models.slot_queue(pending.path)
        pending.acquiring = asyncio.ensure_future(
            queue.acquire(pending.price, _told(node, pending))
        )
    moved: asyncio.Future[int] = asyncio.ensure_future(pending.positions.get())
    waiting: set[asyncio.Future[Any]] = {pending.acquiring, moved}
    try:
        await asyncio.wait(waiting, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not moved.done():
            moved.cancel()
    if pending.acquiring.done():
        return start(node, pending, pending.acquiring.result())
    return moved.result() if moved.done() and not moved.cancelled() else pending.position


def start(node: Node, pending: Pending, lease: SlotLease) -> RunningJob | dict[str, Any]:
    """The slot is ours: start the generation (claimed → running for a pipeline job)."""
    try:
        stream = node.generate(pending.path, pending.generation)
    except InferenceError as exc:
        lease.release()
        return error_frame(ErrorCode.BUSY, f"{pending.name} cannot take the request now: {exc}")
    except Exception as exc:  # our bug: say so briefly, log the rest
        lease.release()
        node.log("error", "p2p", f"job start failed: {exc}")
        return error_frame(ErrorCode.INTERNAL, "the node could not start the generation")
    job = RunningJob(
        stream, pending.name, pending.request, pending.sha256, pending.model, pending.generation
    )
    job.lease = lease
    if pending.ticket is not None and node.jobs is not None:
        job.ticket = pending.ticket
        node.jobs.runs.start(pending.ticket)
    pending.job = job
    return job


async def abandon(node: Node, pending: Pending, cancel: Any) -> None:
    """The client left before streaming began: leave the queue, or stop a run it never saw."""
    if pending.job is not None:
        await cancel(pending.job)
        return
    if pending.acquiring is not None and not pending.acquiring.done():
        pending.acquiring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending.acquiring
    elif pending.acquiring is not None and not pending.acquiring.cancelled():
        with contextlib.suppress(Exception):
            pending.acquiring.result().release()
    if pending.ticket is not None and node.jobs is not None:
        node.jobs.runs.queued(pending.ticket.key, None)
