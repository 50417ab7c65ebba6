"""Inference slots (DESIGN §11.10): free slots are taken at once; waiters are served by price,
then age; each is told its position whenever it changes; one that leaves lets the rest up."""

from __future__ import annotations

import asyncio

import pytest

from fabstir_tui.engine.inference.slots import SlotLease, SlotQueue


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_run_by_price_then_age_and_hear_their_positions() -> None:
    queue = SlotQueue(1)
    first = await queue.acquire(price=1)
    heard: dict[str, list[int]] = {"cheap": [], "rich": [], "late_rich": []}
    order: list[str] = []

    async def wait(name: str, price: int) -> SlotLease:
        lease = await queue.acquire(price, heard[name].append)
        order.append(name)
        return lease

    cheap = asyncio.create_task(wait("cheap", 10))
    await _settle()
    rich = asyncio.create_task(wait("rich", 50))
    await _settle()
    late_rich = asyncio.create_task(wait("late_rich", 50))
    await _settle()
    assert queue.waiting == 3
    # The cheap one was first in line, then two richer ones passed it (older rich first).
    assert heard == {"cheap": [1, 2, 3], "rich": [1], "late_rich": [2]}

    first.release()
    (await rich).release()
    (await late_rich).release()
    (await cheap).release()
    assert order == ["rich", "late_rich", "cheap"]
    assert heard["cheap"] == [1, 2, 3, 2, 1]
    assert queue.busy == 0 and queue.waiting == 0


async def test_a_waiter_that_leaves_moves_the_rest_up_and_slots_are_not_lost() -> None:
    queue = SlotQueue(2)
    a = await queue.acquire()
    b = await queue.acquire()
    heard: list[int] = []
    leaving = asyncio.create_task(queue.acquire(5))
    await _settle()
    staying = asyncio.create_task(queue.acquire(1, heard.append))
    await _settle()
    assert heard == [2]
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert heard == [2, 1] and queue.waiting == 1
    a.release()
    lease = await staying
    b.release()
    lease.release()
    lease.release()  # twice is harmless
    assert queue.busy == 0
    again = await queue.acquire()  # a free slot is taken at once
    again.release()


def test_a_model_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        SlotQueue(0)
