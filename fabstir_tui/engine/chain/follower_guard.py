"""The follower's guard against empty eth_getLogs answers: a backend behind the head (one of
several behind a load balancer) may answer [] for blocks it does not have yet, and a cursor
moved past them never looks again. Each block header's logsBloom says whether our contracts
may have logged there; where it says so and no log of that block came back, the block's logs
are asked for by hash (a node that lacks the block answers "unknown block", not []), and when
they exist the range query is repeated with back-off instead of trusting the gap."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fabstir_tui.engine.chain.cursor import Header, hex_int
from fabstir_tui.engine.chain.logs import LogDecoder
from fabstir_tui.engine.chain.rpc_pool import RpcCallError, RpcPool, RpcUnavailable

log = logging.getLogger(__name__)

# A lagging backend misses a suffix of the range, so the top blocks are the ones to check; in
# steady state a range is one or two blocks and only the end header (fetched anyway) is read.
GUARD_BLOCKS = 8
GUARD_RETRIES = 4  # range queries repeated before the follower gives up for this round
GUARD_BACKOFF_S = 0.25  # doubled after each repeat (0.25 + 0.5 + 1 + 2 s)


class LogsWithheld(RpcUnavailable):
    """eth_getLogs kept leaving out logs that a block's bloom and by-hash query show: the
    cursor stays before that block and the sync loop tries again later."""


Logs = list[dict[str, Any]]


class LogsGuard:
    """Fetches our logs for one block (by hash) or a block range, never trusting an empty
    answer that the headers' blooms contradict."""

    def __init__(self, pool: RpcPool, decoder: LogDecoder, name: str) -> None:
        self.pool = pool
        self.decoder = decoder
        self.name = name
        self.window = GUARD_BLOCKS
        self.retries = GUARD_RETRIES
        self.backoff_s = GUARD_BACKOFF_S
        self.repeats = 0  # range queries repeated because an answer left logs out

    def _may_log(self, header: Header) -> bool:
        """The header has a bloom and it says one of our contracts may have logged."""
        return bool(header.logs_bloom) and self.decoder.bloom_matches(header.logs_bloom)

    async def block_logs(self, header: Header) -> Logs | None:
        """Logs of one pushed head block, by hash: [] when the bloom rules ours out; None
        (look again over the range path) when the call fails or answers [] despite the bloom
        (a lagging node or a false positive). Over HTTP on purpose: requests on the
        subscription socket met Nagle + delayed-ACK stalls of ~20 ms on the next notice."""
        if header.logs_bloom and not self._may_log(header):
            return []
        query = {"blockHash": header.hash, "address": self.decoder.addresses}
        try:
            logs = await self.pool.get_logs(query)
        except RpcCallError as exc:
            log.info("follower %s: logs of block %s failed: %s", self.name, header.hash, exc)
            return None
        return logs if logs or not header.logs_bloom else None

    async def range_logs(self, start: int, end: Header) -> Logs | None:
        """Our logs of blocks start..end. None when a header of the range is missing (the
        node's chain is shorter: the caller looks again next round). RangeTooLarge passes
        through from the first query; LogsWithheld when the answers keep leaving logs out."""
        addresses = self.decoder.addresses
        query: dict[str, Any] = {
            "fromBlock": hex(start),
            "toBlock": hex(end.number),
            "address": addresses,
        }
        logs = await self.pool.get_logs(query)
        headers = await self._window(start, end)
        if headers is None:
            return None
        for attempt in range(self.retries + 1):
            gap = await self._first_gap(headers, logs)
            if gap is None:
                return logs
            if attempt == self.retries:
                break
            self.repeats += 1
            delay = self.backoff_s * 2**attempt
            log.info(
                "follower %s: eth_getLogs %d..%d left out the logs of block %d; asking again "
                "in %g s",
                self.name,
                start,
                end.number,
                gap,
                delay,
            )
            await asyncio.sleep(delay)
            logs = await self.pool.get_logs(query)
        raise LogsWithheld(
            f"eth_getLogs for blocks {start}..{end.number} keeps leaving out the logs of block "
            f"{gap} (its bloom and its logs by hash show them) after {self.retries + 1} tries; "
            f"the follower stays before block {gap} and tries again (a backend of the RPC is "
            "behind the head)"
        )

    async def _window(self, start: int, end: Header) -> list[Header] | None:
        """Headers of the range's top blocks, end included (its header is already here)."""
        numbers = range(max(start, end.number - self.window + 1), end.number)
        blocks = await asyncio.gather(*(self.pool.get_block(n) for n in numbers))
        if any(block is None for block in blocks):
            return None
        return [*(Header.from_rpc(b) for b in blocks if b is not None), end]

    async def _first_gap(self, headers: list[Header], logs: Logs) -> int | None:
        """The lowest checked block whose bloom may hold our logs, none of which came back,
        and whose logs by hash show some (or whose hash the node does not know)."""
        answered = {hex_int(raw["blockNumber"]) for raw in logs if not raw.get("removed")}
        for header in headers:
            if header.number in answered or not self._may_log(header):
                continue
            query = {"blockHash": header.hash, "address": self.decoder.addresses}
            try:
                by_hash = await self.pool.get_logs(query)
            except RpcCallError as exc:  # "unknown block": this backend lacks it too
                log.info("follower %s: logs of block %d: %s", self.name, header.number, exc)
                return header.number
            if by_hash:
                return header.number
            # [] by hash from a node that knows the block: a bloom false positive
        return None
