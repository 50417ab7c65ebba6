"""Runs trio (py-libp2p's only backend) beside the engine's asyncio loop and crosses between them.

Guest mode (DESIGN §2) drives trio from the asyncio loop itself; a thread running `trio.run` is
the fallback. asyncio→trio goes through the trio token into an unbounded memory channel (a
bounded one raised WouldBlock inside `run_sync_soon` and killed the run, FIELD-NOTES);
trio→asyncio goes through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

import outcome
import trio

_log = logging.getLogger(__name__)

T = TypeVar("T")
Mode = Literal["guest", "thread"]


class TaskStatusLike(Protocol):
    """trio's task_status; typed locally because libp2p drags in trio-typing, whose old
    trio-stubs shadow trio's own annotations for mypy."""

    def started(self, value: Any = None) -> None:
        """Report the task as started with `value`."""


class BridgeClosed(RuntimeError):
    """Raised to asyncio callers when the trio side is not running (never started or stopped)."""


@dataclass(eq=False)
class _Call:
    """One unit of work sent to trio; `future` is None for fire-and-forget spawns."""

    fn: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None
    scope: trio.CancelScope | None = None
    cancelled: bool = False
    service: bool = False
    label: str = field(default="")


class _StartedProxy:
    """Wraps a trio task_status so a service's post-start failure can be told from a start one."""

    def __init__(self, inner: TaskStatusLike) -> None:
        self._inner = inner
        self.is_started = False

    def started(self, value: Any = None) -> None:
        """Forward to trio and remember the service is up."""
        self.is_started = True
        self._inner.started(value)


class TrioBridge:
    """Owns one trio run and one supervising nursery; every method except `to_asyncio` and
    `call_asyncio` is called from the asyncio loop."""

    def __init__(self, *, mode: Mode = "guest") -> None:
        self._requested: Mode = mode
        self._mode: Mode | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._send: trio.MemorySendChannel[_Call] | None = None
        self._nursery: trio.Nursery | None = None
        self._ready: asyncio.Future[None] | None = None
        self._done: asyncio.Future[outcome.Outcome[None]] | None = None
        self._pending: set[_Call] = set()
        self._stopping = False

    @property
    def mode(self) -> Mode | None:
        """The mode actually running ("thread" after a guest-mode fallback); None before start."""
        return self._mode

    @property
    def running(self) -> bool:
        """True between a successful start() and the end of the trio run."""
        return self._token is not None and self._done is not None and not self._done.done()

    # --- lifecycle (asyncio side) -------------------------------------------------------

    async def start(self) -> None:
        """Start the trio run and wait until its nursery accepts work."""
        if self._done is not None or self._stopping:
            raise BridgeClosed("a TrioBridge starts once and cannot restart after stop()")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._ready = loop.create_future()
        self._done = loop.create_future()
        mode = self._requested
        if mode == "guest":
            try:
                trio.lowlevel.start_guest_run(
                    self._trio_main,
                    run_sync_soon_threadsafe=partial(_schedule, loop.call_soon_threadsafe),
                    run_sync_soon_not_threadsafe=partial(_schedule, loop.call_soon),
                    done_callback=self._on_done,
                    host_uses_signal_set_wakeup_fd=threading.current_thread()
                    is threading.main_thread(),
                )
            except RuntimeError as exc:  # e.g. another trio guest run already on this thread
                _log.warning("trio guest mode unavailable (%s); falling back to a thread", exc)
                mode = "thread"
        if mode == "thread":
            threading.Thread(target=self._thread_main, name="trio-bridge", daemon=True).start()
        self._mode = mode
        waiters: set[asyncio.Future[Any]] = {self._ready, self._done}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.done():
            self._done.result().unwrap()
            raise BridgeClosed("the trio run ended before it was ready")

    async def stop(self) -> None:
        """Cancel everything running in trio and wait for the run to end; safe to call twice."""
        if self._done is None:
            self._stopping = True
            return
        if not self._done.done() and not self._stopping:
            self._stopping = True
            self._submit_sync(self._cancel_all)
        result = await asyncio.shield(self._done)
        if isinstance(result, outcome.Error):
            _log.error("trio run ended with an error", exc_info=result.error)

    # --- asyncio → trio -----------------------------------------------------------------

    async def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `async_fn(*args)` in trio and return its result; its exception is re-raised here,
        and cancelling the caller cancels the trio task."""
        loop = self._require_loop()
        call = _Call(async_fn, args, loop.create_future())
        self._enqueue(call)
        assert call.future is not None
        try:
            return await call.future  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            call.cancelled = True
            self._submit_sync(self._cancel_call, call)
            raise

    def spawn(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `async_fn(*args)` in trio without waiting; a failure is logged, never fatal."""
        self._require_loop()
        self._enqueue(_Call(async_fn, args, None, label=getattr(async_fn, "__qualname__", "")))

    async def start_service(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start a long-lived trio task (`async_fn(*args, task_status=...)`, trio's `nursery.start`
        protocol) and return the value it passes to `task_status.started()`. A failure before
        started() is raised here; one after is logged and leaves the bridge running."""
        return await self.run(self._start_service, async_fn, args)

    # --- trio → asyncio -----------------------------------------------------------------

    def to_asyncio(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule the plain callable `fn(*args)` on the asyncio loop; callable from trio code."""
        self._loop_for_trio().call_soon_threadsafe(fn, *args)

    async def call_asyncio(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """From trio, run `async_fn(*args)` as an asyncio task and await its result; cancelling
        the trio caller cancels the asyncio task."""
        loop = self._loop_for_trio()
        token = trio.lowlevel.current_trio_token()
        send, recv = trio.open_memory_channel[outcome.Outcome[T]](math.inf)
        holder: list[asyncio.Future[T]] = []

        def _deliver(result: outcome.Outcome[T]) -> None:
            # The trio caller may have been cancelled and closed its end meanwhile; raising
            # here, inside run_sync_soon, would end the whole trio run.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(result)

        def _back(task: asyncio.Future[T]) -> None:
            result: outcome.Outcome[T] = outcome.capture(task.result)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(_deliver, result)

        def _launch() -> None:
            task = asyncio.ensure_future(async_fn(*args))
            holder.append(task)
            task.add_done_callback(_back)

        def _cancel() -> None:
            if holder:
                holder[0].cancel()

        loop.call_soon_threadsafe(_launch)
        try:
            with recv:
                result = await recv.receive()
        except trio.Cancelled:
            loop.call_soon_threadsafe(_cancel)
            raise
        return result.unwrap()

    # --- internals ----------------------------------------------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or not self.running or self._stopping:
            raise BridgeClosed("the trio bridge is not running")
        return self._loop

    def _loop_for_trio(self) -> asyncio.AbstractEventLoop:
        """The loop as seen from trio code, which may still run while the bridge stops."""
        if self._loop is None:
            raise BridgeClosed("the trio bridge was never started")
        return self._loop

    def _submit_sync(self, fn: Callable[..., None], *args: Any) -> bool:
        """Queue a plain callable into trio through its token; False once the run has finished."""
        token = self._token
        if token is None:
            return False
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def _enqueue(self, call: _Call) -> None:
        self._pending.add(call)
        if not self._submit_sync(self._push, call):
            self._pending.discard(call)
            raise BridgeClosed("the trio run has finished")

    def _push(self, call: _Call) -> None:
        """Runs inside trio; never raises, since an exception here would kill the whole run."""
        send = self._send
        try:
            if send is None:
                raise BridgeClosed("the trio bridge is not ready")
            send.send_nowait(call)
        except Exception as exc:  # closed channel during shutdown
            self._deliver(call, outcome.Error(BridgeClosed(str(exc) or "bridge closed")))

    def _deliver(self, call: _Call, result: outcome.Outcome[Any]) -> None:
        """Hand a call's outcome to its asyncio future (from trio, so always threadsafe)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(self._settle, call, result)

    def _settle(self, call: _Call, result: outcome.Outcome[Any]) -> None:
        self._pending.discard(call)
        fut = call.future
        if fut is None or fut.done():
            return
        if isinstance(result, outcome.Value):
            fut.set_result(result.value)
        else:
            fut.set_exception(result.error)

    def _cancel_all(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @staticmethod
    def _cancel_call(call: _Call) -> None:
        if call.scope is not None:
            call.scope.cancel()

    async def _trio_main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        send, recv = trio.open_memory_channel[_Call](math.inf)
        self._send = send
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._dispatch, recv, nursery)
                if self._stopping:
                    nursery.cancel_scope.cancel()
                self._signal_ready()
        finally:
            self._send = None
            send.close()

    def _signal_ready(self) -> None:
        """Tell the asyncio side the nursery is open (threadsafe)."""
        loop, ready = self._loop, self._ready
        if loop is not None and ready is not None:
            loop.call_soon_threadsafe(_resolve, ready)

    async def _dispatch(
        self, recv: trio.MemoryReceiveChannel[_Call], nursery: trio.Nursery
    ) -> None:
        async with recv:
            async for call in recv:
                nursery.start_soon(self._run_call, call, name=call.label or None)

    async def _run_call(self, call: _Call) -> None:
        result: outcome.Outcome[Any] | None = None
        try:
            with trio.CancelScope() as scope:
                call.scope = scope
                if call.cancelled:
                    scope.cancel()
                result = outcome.Value(await call.fn(*call.args))
        except trio.Cancelled:
            self._deliver(call, outcome.Error(BridgeClosed("the trio bridge stopped")))
            raise
        except Exception as exc:
            if call.future is None:
                _log.exception("trio task %s failed", call.label or call.fn)
            result = outcome.Error(exc)
        except BaseException:
            self._deliver(call, outcome.Error(BridgeClosed("the trio run is ending")))
            raise
        if result is None:  # cancelled from the asyncio side; its future is already cancelled
            result = outcome.Error(BridgeClosed("cancelled"))
        self._deliver(call, result)

    async def _start_service(
        self, async_fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> Any:
        nursery = self._nursery
        if nursery is None:
            raise BridgeClosed("the trio bridge is not running")
        return await nursery.start(self._supervise, async_fn, args)

    @staticmethod
    async def _supervise(
        async_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        proxy = _StartedProxy(task_status)
        try:
            await async_fn(*args, task_status=proxy)
        except Exception:
            if not proxy.is_started:
                raise
            _log.exception("trio service %s failed", getattr(async_fn, "__qualname__", async_fn))

    def _thread_main(self) -> None:
        try:
            trio.run(self._trio_main)
            result: outcome.Outcome[None] = outcome.Value(None)
        except BaseException as exc:
            result = outcome.Error(exc)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._on_done, result)
            except RuntimeError:
                _log.warning("asyncio loop closed before the trio thread ended")

    def _on_done(self, result: outcome.Outcome[None]) -> None:
        """Runs on the asyncio loop when the trio run ends: fail whatever is still waiting."""
        self._token = None
        self._nursery = None
        for call in list(self._pending):
            self._settle(call, outcome.Error(BridgeClosed("the trio bridge stopped")))
        self._pending.clear()
        if self._done is not None and not self._done.done():
            self._done.set_result(result)


def _resolve(future: asyncio.Future[None]) -> None:
    """Set a readiness future once (it may already be done after a racing stop)."""
    if not future.done():
        future.set_result(None)


def _schedule(call_soon: Callable[[Callable[[], None]], object], fn: Callable[[], None]) -> None:
    """Adapt asyncio's call_soon* (which returns a Handle) to trio's run_sync_soon signature."""
    call_soon(fn)
