"""Admission control for inbound connection upgrades (issue 4 item 4), for libp2p 0.8.1.

Why: the library's TCP listener (`transport/tcp/tcp.py`, `trio.serve_listeners`) starts a task
per accepted socket at once, and each runs Noise + multiselect + yamux under its own 10 s
`fail_after` (`network/swarm.py` `upgrade_inbound_raw_conn`). A burst of newcomers therefore
shares the CPU among all their handshakes at once: they progress together, finish together,
and on a busy 2-core machine all run past their timeouts together, so nobody gets in.

Here a bounded number of upgrades run at once (`max_handshakes`); later arrivals wait their
turn in FIFO order (a trio.Semaphore parks waiters first-in first-out), and the library's
upgrade timeout only starts when the turn starts. A waiter whose turn does not come within
`queue_timeout_s` is closed: its dialer has given up by then. A newcomer keeps its slot after
the upgrade until its first application stream (not identify/ping) has been handled, or
`settle_s` has passed, so its first-stream negotiation does not starve behind the next
handshakes (the 10 s negotiation timeouts of FIELD-NOTES).

Hooks (libp2p 0.8.1; it has no admission hook that can wait: its `connection_gate` and
resource manager only allow or deny): the swarm's public `upgrade_inbound_raw_conn` and its
`common_stream_handler` attribute, both wrapped on the one swarm instance.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import trio

_log = logging.getLogger(__name__)

_HOUSEKEEPING = ("/ipfs/id/", "/ipfs/ping/")
_INSTALLED: weakref.WeakKeyDictionary[Any, InboundAdmission] = weakref.WeakKeyDictionary()


@dataclass(slots=True)
class AdmissionStats:
    """What admission control did, for logs, the bench and tests."""

    admitted: int = 0
    upgraded: int = 0
    failed: int = 0
    queue_timeouts: int = 0
    settle_timeouts: int = 0
    peak_in_progress: int = 0
    peak_waiting: int = 0
    longest_wait_s: float = 0.0


class InboundAdmission:
    """At most `max_handshakes` inbound upgrades at once; the rest wait in arrival order."""

    def __init__(self, max_handshakes: int, queue_timeout_s: float, settle_s: float = 0.5) -> None:
        if max_handshakes < 1:
            raise ValueError("max_handshakes must be at least 1")
        self.max_handshakes = max_handshakes
        self.queue_timeout_s = queue_timeout_s
        self.settle_s = settle_s
        self._settling: dict[Any, trio.Event] = {}
        self.in_progress = 0
        self.waiting = 0
        self.stats = AdmissionStats()
        self._slots = trio.Semaphore(max_handshakes)

    def install(self, swarm: Any) -> None:
        """Wrap `swarm.upgrade_inbound_raw_conn` so every inbound upgrade waits for a slot."""
        if swarm in _INSTALLED:
            raise RuntimeError("admission control is already installed on this swarm")
        upgrade = swarm.upgrade_inbound_raw_conn
        handle_stream = swarm.common_stream_handler

        async def admitted_upgrade(raw_conn: Any, maddr: Any) -> Any:
            return await self.upgrade(upgrade, raw_conn, maddr)

        async def noting_stream_handler(net_stream: Any) -> None:
            try:
                await handle_stream(net_stream)
            finally:
                self._note_stream_handled(net_stream)

        swarm.upgrade_inbound_raw_conn = admitted_upgrade
        swarm.common_stream_handler = noting_stream_handler
        _INSTALLED[swarm] = self

    async def upgrade(self, upgrade: Any, raw_conn: Any, maddr: Any) -> Any:
        """Wait for a slot (at most `queue_timeout_s`), then run the library's upgrade in it."""
        from libp2p.network.exceptions import SwarmException

        arrived = trio.current_time()
        self.waiting += 1
        self.stats.peak_waiting = max(self.stats.peak_waiting, self.waiting)
        try:
            with trio.move_on_after(self.queue_timeout_s) as queue_limit:
                await self._slots.acquire()
        finally:
            self.waiting -= 1
        if queue_limit.cancelled_caught:  # no slot was taken
            self.stats.queue_timeouts += 1
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await raw_conn.close()
                except Exception as exc:  # already gone: nothing to close
                    _log.debug("closing a connection that waited too long: %s", exc)
            raise SwarmException(f"no upgrade slot within {self.queue_timeout_s:g} s")
        self._note_turn(trio.current_time() - arrived)
        try:
            try:
                muxed = await upgrade(raw_conn, maddr)
            except BaseException:
                self.stats.failed += 1
                raise
            self.stats.upgraded += 1
            await self._settle(muxed)
        finally:
            self.in_progress -= 1
            self._slots.release()
        return muxed

    async def _settle(self, muxed: Any) -> None:
        """Hold the slot until the newcomer's first application stream is handled (or
        `settle_s`); the connection itself is already live and serving."""
        if self.settle_s <= 0:
            return
        settled = trio.Event()
        self._settling[muxed] = settled
        try:
            with trio.move_on_after(self.settle_s) as scope:
                await settled.wait()
            if scope.cancelled_caught:
                self.stats.settle_timeouts += 1
        finally:
            self._settling.pop(muxed, None)

    def _note_stream_handled(self, net_stream: Any) -> None:
        """An inbound stream's handler returned: release a settling newcomer's slot once it
        is an application protocol (identify and ping come with every connection)."""
        if not self._settling:
            return
        get_protocol = getattr(net_stream, "get_protocol", None)
        protocol = str(get_protocol() or "") if get_protocol is not None else ""
        if not protocol or protocol.startswith(_HOUSEKEEPING):
            return
        settled = self._settling.get(getattr(net_stream, "muxed_conn", None))
        if settled is not None:
            settled.set()

    def _note_turn(self, waited: float) -> None:
        self.in_progress += 1
        stats = self.stats
        stats.admitted += 1
        stats.peak_in_progress = max(stats.peak_in_progress, self.in_progress)
        stats.longest_wait_s = max(stats.longest_wait_s, waited)


def admission_of(host: Any) -> InboundAdmission | None:
    """The admission control installed on a host's swarm, or None (the library's default)."""
    return _INSTALLED.get(host.get_network())
