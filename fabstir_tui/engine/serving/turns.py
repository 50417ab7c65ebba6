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
import math
import time
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
# A waiter hears of a new position at most this often: every slot freed moves every waiter up
# one, so telling each of n waiters each move sends n²/2 frames (1000 clients: 499,500).
REPORT_EVERY_S = 1.0
# Further back a position still changes about every second, but a client there waits long:
# it hears the news with the heartbeat (1000 waiters: ~200 frames a second, not ~1000).
NEAR_FRONT = 16


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
    moved: asyncio.Event = field(default_factory=asyncio.Event)
    position: int = 0  # 0 until it queues (it may never: a free slot is taken at once)
    reported: int = 0  # the position the client was last told
    reported_at: float = -math.inf
    arrived: float = field(default_factory=time.monotonic)
    acquiring: asyncio.Future[SlotLease] | None = None
    job: RunningJob | None = None


def _told(node: Node, pending: Pending) -> Any:
    """The slot queue's position callback: the Jobs screen sees it now, the client at its
    next report."""

    def on_position(position: int) -> None:
        pending.position = position
        pending.moved.set()
        if pending.ticket is not None and node.jobs is not None:
            node.jobs.runs.queued(pending.ticket.key, position)

    return on_position


async def next_turn(node: Node, pending: Pending) -> int | RunningJob | dict[str, Any]:
    """The started run once a slot is free, else the request's position to tell its client:
    a new one at most every REPORT_EVERY_S (every HEARTBEAT_S beyond NEAR_FRONT), the same
    one again after HEARTBEAT_S of quiet; or an error frame."""
    if pending.acquiring is None:
        if pending.ticket is not None and node.jobs is not None:
            refused = node.jobs.runs.hold(pending.ticket.key, pending)
            if refused is not None:
                return error_frame(refused.code, refused.message)
        queue = node.models.slot_queue(pending.path)
        pending.acquiring = asyncio.ensure_future(
            queue.acquire(pending.price, _told(node, pending))
        )
    while True:
        if pending.acquiring.done():
            return start(node, pending, pending.acquiring.result())
        now = time.monotonic()
        changed = pending.position not in (0, pending.reported)
        beat_at = max(pending.reported_at, pending.arrived) + HEARTBEAT_S
        every = REPORT_EVERY_S if pending.position <= NEAR_FRONT else HEARTBEAT_S
        due = min(pending.reported_at + every, beat_at) if changed else beat_at
        if now >= due and pending.position:
            pending.reported, pending.reported_at = pending.position, now
            return pending.position
        due = max(due, now + REPORT_EVERY_S)  # not queued yet: nothing to tell
        pending.moved.clear()
        moved = asyncio.ensure_future(pending.moved.wait())
        waiting: set[asyncio.Future[Any]] = {pending.acquiring}
        if not changed:
            waiting.add(moved)
        try:
            await asyncio.wait(waiting, timeout=due - now, return_when=asyncio.FIRST_COMPLETED)
        finally:
            moved.cancel()


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
        node.jobs.runs.let_go(pending.ticket.key, pending)
