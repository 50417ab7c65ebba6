"""Follow our contracts' events into SQLite: once each, in order, across restarts and reorgs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from fabstir_tui.config import ChainSection
from fabstir_tui.engine.chain.cursor import Cursor, FollowerTables, Header, hex_int, hex_str
from fabstir_tui.engine.chain.events import (
    ChainConnection,
    ChainHead,
    ChainLogApplied,
    ChainReorged,
    ConnectionState,
)
from fabstir_tui.engine.chain.follower_guard import LogsGuard
from fabstir_tui.engine.chain.logs import ContractSpec, DecodedLog, LogDecoder
from fabstir_tui.engine.chain.rpc_pool import (
    RangeTooLarge,
    RpcCallError,
    RpcPool,
    RpcUnavailable,
    url_host,
)
from fabstir_tui.engine.chain.ws import WsRpc
from fabstir_tui.engine.events import EventBus
from fabstir_tui.engine.store import Store

log = logging.getLogger(__name__)

# apply(db, log): write the log's effects in the follower's open transaction (it commits them
# with the "applied" mark and the cursor); raise to abort it, which stops run(). It runs on the
# event loop thread: keep it to SQL on `db`.
ApplyFn = Callable[[sqlite3.Connection, DecodedLog], None]
# on_reorg(db, fork_block): delete what was derived from blocks above fork_block. It runs in
# the rollback's transaction after chain_logs rows above fork_block are gone (those at or
# below it remain, so a handler may rebuild from them); the rescan then re-applies the rest.
ReorgFn = Callable[[sqlite3.Connection, int], None]

HEAD_PUBLISH_S = 0.25  # at most four ChainHead events a second
MAX_REORGS_PER_ROUND = 16


class FollowerError(RuntimeError):
    """The follower cannot go on: the message says what failed and what to do."""


class _Inconsistent(Exception):
    """The node answered from two versions of the chain within one range: look again."""


class EventFollower:
    """Applies our contracts' logs to the store exactly once, in (block, log index) order."""

    def __init__(
        self,
        pool: RpcPool,
        ws_url: str,
        store: Store,
        contracts: ContractSpec,
        chain_config: ChainSection,
        apply: ApplyFn,
        on_reorg: ReorgFn | None = None,
        bus: EventBus | None = None,
        cursor_name: str = "main",
        *,
        keep_blocks: int = 1024,
        max_backoff_s: float = 30.0,
        ws_idle_poll_s: float = 30.0,
    ) -> None:
        self.pool = pool
        self.ws_url = ws_url
        self.store = store
        self.decoder = LogDecoder(contracts)
        self.logs_guard = LogsGuard(pool, self.decoder, cursor_name)
        self.config = chain_config
        self.confirmations = chain_config.confirmations
        self._apply_fn = apply
        self._on_reorg = on_reorg
        self.bus = bus
        self.name = cursor_name
        self.tables = FollowerTables(store, cursor_name, max(keep_blocks, self.confirmations + 16))
        self.max_backoff_s = max_backoff_s
        self.ws_idle_poll_s = ws_idle_poll_s
        self._chunk = chain_config.log_chunk_blocks
        self._cursor = self.tables.load_cursor(chain_config.start_block)
        self._head: int | None = None
        self._latest_header: Header | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._ws_live = False
        self._down = False
        self._last_head_pub = 0.0
        self._last_head: tuple[int, int, bool] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self.applied_count = 0
        self.reorg_count = 0

    # --- state ------------------------------------------------------------------------------

    @property
    def cursor(self) -> Cursor:
        """The newest block whose logs are all applied."""
        return self._cursor

    @property
    def head(self) -> int | None:
        """The newest block number the follower has seen, None before the first look."""
        return self._head

    @property
    def synced(self) -> bool:
        """True when every block at or below head - confirmations is applied."""
        return self._head is not None and self._cursor.number >= self._head - self.confirmations

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow until stop(); raises only for what retrying cannot fix (a failing handler)."""
        if self._running:
            raise FollowerError(f"follower {self.name!r} is already running")
        self._running = True
        self._done.clear()
        self._cursor = self.tables.load_cursor(self.config.start_block)
        self._wake.set()
        tasks = [asyncio.create_task(self._sync_loop(), name=f"follower-{self.name}-sync")]
        if self.ws_url:
            tasks.append(asyncio.create_task(self._ws_loop(), name=f"follower-{self.name}-ws"))
        else:
            self._connection("polling", self.pool.current_url, "no ws_url: polling over HTTP")
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task is stopper or task.cancelled() else task.exception()
                if error is not None:
                    raise error
        finally:
            for task in (*tasks, stopper):
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
            if self._head_timer is not None:  # the last word on the head is not lost
                self._head_timer.cancel()
                self._flush_head()
            self._ws_live = False
            self._running = False
            self._stopping.clear()  # a stop() before run() started still ends that run
            self._done.set()

    async def stop(self) -> None:
        """Ask run() to end and wait until it has; an open transaction always completes."""
        self._stopping.set()
        if self._running:
            await self._done.wait()

    async def sync_once(self) -> None:
        """One catch-up round now (tests and tools); run() does this on every new head."""
        await self._round(None)

    # --- loops ------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        """Wake on a new head (WebSocket) or every poll interval; retry RPC outages forever."""
        backoff = self.config.poll_interval_s
        while True:
            timeout = self.ws_idle_poll_s if self._ws_live else self.config.poll_interval_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            header, self._latest_header = self._latest_header, None
            try:
                await self._round(header)
            except (RpcUnavailable, RpcCallError) as exc:  # outages and odd answers pass
                self._down = True
                self._connection("down", self.pool.current_url, str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                self._wake.set()
                continue
            backoff = self.config.poll_interval_s
            if self._down:
                self._down = False
                if self._ws_live:
                    self._connection("connected", self.ws_url, "RPC reachable again")
                else:
                    self._connection("polling", self.pool.current_url, "RPC reachable again")

    async def _ws_loop(self) -> None:
        """newHeads over WebSocket; on a drop, poll while reconnecting with back-off."""
        backoff = 0.5
        while True:
            try:
                async with WsRpc(self.ws_url, self._on_notice) as ws:
                    await ws.subscribe("newHeads")
                    self._ws_live, backoff = True, 0.5
                    self._connection("connected", self.ws_url, "subscribed to newHeads")
                    self._wake.set()  # catch up from the cursor: heads were missed while away
                    reason = await ws.wait_closed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any WebSocket failure is survivable: we poll meanwhile
                reason = f"{type(exc).__name__}: {exc}".strip()
            finally:
                self._ws_live = False
            self._wake.set()
            self._connection(
                "reconnecting",
                self.ws_url,
                f"{reason}; polling {url_host(self.pool.current_url)} meanwhile, "
                f"retrying in {backoff:g} s",
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _on_notice(self, _subscription: str, result: Any) -> None:
        """A newHeads notice: keep only the newest header and wake the sync loop."""
        if isinstance(result, Mapping) and "parentHash" in result:
            self._latest_header = Header.from_rpc(result)
            self._wake.set()

    # --- one round --------------------------------------------------------------------------

    async def _round(self, header: Header | None) -> None:
        """Check for a reorg, then apply every safe block; a reorg or a race means look again."""
        for _ in range(MAX_REORGS_PER_ROUND):
            if await self._step(header):
                return
            header = None
        raise RpcUnavailable(f"the chain kept reorganising under follower {self.name!r}")

    def _linked(self, header: Header | None) -> bool:
        """The pushed header is the cursor's child: no reorg check or header fetch is needed."""
        return (
            header is not None
            and self.confirmations == 0
            and header.number == self._cursor.number + 1
            and (header.parent_hash == self._cursor.hash or not self._cursor.hash)
        )

    async def _step(self, header: Header | None) -> bool:
        head = header.number if header is not None else await self.pool.block_number()
        self._head = head
        cursor = self._cursor
        known = header is not None and header.number == cursor.number and header.hash == cursor.hash
        if cursor.hash and not known and not self._linked(header):
            block = await self.pool.get_block(cursor.number)
            if block is None and head >= cursor.number:
                return True  # a node behind a load balancer lags: not a reorg, look again
            if block is None or hex_str(block["hash"]) != cursor.hash:
                await self._rewind()
                return False
        self._publish_head()
        safe = head - self.confirmations
        while self._cursor.number < safe and not self._stopping.is_set():
            start = self._cursor.number + 1
            logs: list[dict[str, Any]] | None = None
            end_header: Header | None = None
            if header is not None and self._linked(header):
                logs = await self.logs_guard.block_logs(header)
                end_header = header if logs is not None else None
                header = None
            if end_header is None:
                end = min(self._cursor.number + self._chunk, safe)
                block = await self.pool.get_block(end)
                if block is None:
                    return True  # the chain is shorter than it was: the next round sees why
                end_header = Header.from_rpc(block)
                try:
                    logs = await self.logs_guard.range_logs(start, end_header)
                except RangeTooLarge as exc:
                    if end == start:
                        raise FollowerError(
                            f"the RPC refuses eth_getLogs even for one block ({exc}); use a "
                            "provider without that limit in chain.rpc_urls"
                        ) from exc
                    self._chunk = max(1, (end - start + 1) // 2)
                    log.info("eth_getLogs range capped (%s): %d blocks a request", exc, self._chunk)
                    continue
                if logs is None:
                    return True  # a header of the range is missing: look again next round
            assert logs is not None
            try:
                await self._apply_range(start, end_header, logs)
            except _Inconsistent as exc:
                log.info("follower %s: %s; looking again", self.name, exc)
                return False
            self._publish_head()
        return True

    async def _apply_range(self, start: int, end: Header, raw_logs: list[dict[str, Any]]) -> None:
        """Apply the logs of blocks start..end and move the cursor to end, in one transaction."""
        hashes: dict[int, str] = {end.number: end.hash}
        times: dict[int, int] = {end.number: end.timestamp}
        ordered = []
        for raw in raw_logs:
            if raw.get("removed"):
                continue
            number = hex_int(raw["blockNumber"])
            block_hash = hex_str(raw["blockHash"])
            if (
                not start <= number <= end.number
                or hashes.setdefault(number, block_hash) != block_hash
            ):
                raise _Inconsistent(
                    f"log of block {number} ({block_hash}) does not fit {start}..{end.number}"
                )
            if "blockTimestamp" in raw:
                times[number] = hex_int(raw["blockTimestamp"])
            ordered.append((number, hex_int(raw["logIndex"]), raw))
        ordered.sort(key=lambda item: (item[0], item[1]))
        missing = sorted({n for n, _, _ in ordered if n not in times})
        if missing:
            blocks = await asyncio.gather(*(self.pool.get_block(n) for n in missing))
            for number, block in zip(missing, blocks, strict=True):
                if block is None or hex_str(block["hash"]) != hashes[number]:
                    raise _Inconsistent(f"block {number} changed while its logs were read")
                times[number] = hex_int(block["timestamp"])
        decoded = [
            d for n, _, raw in ordered if (d := self.decoder.decode(raw, times[n])) is not None
        ]
        applied: list[DecodedLog] = []
        cursor = Cursor(end.number, end.hash)
        records = [(n, h, end.parent_hash if n == end.number else "") for n, h in hashes.items()]
        with self.store.transaction() as db:
            for item in decoded:
                if self.tables.mark_applied(db, item):  # else: a restart or rescan met it again
                    self._apply_fn(db, item)
                    applied.append(item)
            self.tables.record_blocks(db, records, cursor)
        self._cursor = cursor
        self.applied_count += len(applied)
        if self.bus is not None:
            for item in applied:
                self.bus.publish(
                    ChainLogApplied(
                        contract=item.contract,
                        event=item.event,
                        args=item.args,
                        tx_hash=item.tx_hash,
                        log_index=item.log_index,
                        block_number=item.block_number,
                        block_time=item.block_time,
                        block_hash=item.block_hash,
                    )
                )

    async def _rewind(self) -> None:
        """Walk back to the newest recorded block the chain still has; roll back above it."""
        old = self._cursor
        fork = Cursor(self.config.start_block - 1, "")
        for number, block_hash in self.tables.recorded_blocks(old.number):
            block = await self.pool.get_block(number)
            if block is not None and hex_str(block["hash"]) == block_hash:
                fork = Cursor(number, block_hash)
                break
        else:
            log.warning(
                "follower %s: no recorded block survived the reorg; rescanning from block %d",
                self.name,
                self.config.start_block,
            )
        with self.store.transaction() as db:
            self.tables.roll_back(db, fork)
            if self._on_reorg is not None:
                self._on_reorg(db, fork.number)
        self._cursor = fork
        self.reorg_count += 1
        log.warning(
            "follower %s: reorg, blocks after %d replaced (cursor was %d)",
            self.name,
            fork.number,
            old.number,
        )
        if self.bus is not None:
            self.bus.publish(ChainReorged(fork_block=fork.number, depth=old.number - fork.number))

    # --- events -----------------------------------------------------------------------------

    def _connection(self, state: ConnectionState, url: str, detail: str) -> None:
        """Publish the connection state; URLs lose their path (providers put API keys there)."""
        host = url_host(url)
        log.info("follower %s: %s %s (%s)", self.name, state, host, detail)
        if self.bus is not None:
            self.bus.publish(ChainConnection(state=state, url=host, detail=detail))

    def _publish_head(self) -> None:
        """Publish ChainHead now, or once the throttle allows, with the state at that time."""
        if self.bus is None or self._head is None:
            return
        now = time.monotonic()
        wait = self._last_head_pub + HEAD_PUBLISH_S - now
        if wait > 0:
            if self._head_timer is None:
                loop = asyncio.get_running_loop()
                self._head_timer = loop.call_later(wait, self._flush_head)
            return
        self._flush_head()

    def _flush_head(self) -> None:
        self._head_timer = None
        if self.bus is None or self._head is None:
            return
        state = (self._head, self._cursor.number, self.synced)
        if state == self._last_head:
            return
        self._last_head = state
        self._last_head_pub = time.monotonic()
        self.bus.publish(ChainHead(block_number=state[0], applied_block=state[1], synced=state[2]))
