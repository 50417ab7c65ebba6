"""Inference slots (DESIGN §11.10): a model serves `inference.slots` requests at once; the
rest wait in a queue ordered by price (higher first), then age, and each sees its position.

A waiter's position is pushed to it (a callback) whenever it changes, so a client can be told
"you are 3rd" and the Jobs screen can show it. A waiter that gives up (its client went away)
leaves the queue and everyone behind it moves up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

PositionFn = Callable[[int], None]


@dataclass(order=True)
class _Waiter:
    rank: tuple[int, int]  # (-price, arrival): the queue's order
    future: asyncio.Future[None] = field(compare=False)
    on_position: PositionFn = field(compare=False)
    position: int = field(default=0, compare=False)


class SlotLease:
    """A held slot; release() (or leaving the `async with`) lets the next waiter in."""

    def __init__(self, queue: SlotQueue) -> None:
        self._queue = queue
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._queue._release()

    async def __aenter__(self) -> SlotLease:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.release()


class SlotQueue:
    """Slots of one loaded model, on the asyncio loop."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a model needs at least one slot")
        self.capacity = capacity
        self.busy = 0
        self._waiters: list[_Waiter] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, price: int = 0, on_position: PositionFn | None = None) -> SlotLease:
        """A slot now when one is free (and nobody waits), else after the waiters ahead."""
        if self.busy < self.capacity and not self._waiters:
            self.busy += 1
            return SlotLease(self)
        loop = asyncio.get_running_loop()
        rank = (-price, next(self._arrivals))
        waiter = _Waiter(rank, loop.create_future(), on_position or _quiet)
        self._waiters.append(waiter)
        self._waiters.sort()
        self._announce()
        try:
            await waiter.future
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._announce()
            elif waiter.future.done() and not waiter.future.cancelled():
                self._release()  # granted as we were cancelled: hand the slot on
            raise
        return SlotLease(self)

    def _release(self) -> None:
        self.busy -= 1
        while self._waiters and self.busy < self.capacity:
            waiter = self._waiters.pop(0)
            if waiter.future.done():
                continue
            self.busy += 1
            waiter.future.set_result(None)
        self._announce()

    def _announce(self) -> None:
        """Tell every waiter whose position changed (1 = next to run)."""
        for index, waiter in enumerate(self._waiters, start=1):
            if waiter.position != index:
                waiter.position = index
                waiter.on_position(index)


def _quiet(_position: int) -> None:
    """A waiter nobody needs to tell."""
