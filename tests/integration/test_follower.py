"""The event follower on a real anvil: restarts, dropped WebSockets, reorgs, chunking, failover."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from follower_kit import (
    Emitter,
    LaggingLogsRpc,
    RangeCappingRpc,
    Recorder,
    TcpRelay,
    wait_until,
)

from fabstir_tui.config import ChainSection
from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.chain.events import (
    ChainConnection,
    ChainHead,
    ChainLogApplied,
    ChainReorged,
)
from fabstir_tui.engine.chain.follower import EventFollower
from fabstir_tui.engine.chain.follower_guard import LogsWithheld
from fabstir_tui.engine.chain.logs import DecodedLog, LogDecoder
from fabstir_tui.engine.chain.rpc_pool import RpcPool
from fabstir_tui.engine.events import EventBus, Subscription
from fabstir_tui.engine.store import Store


@pytest.fixture
def chain() -> Iterator[Anvil]:
    with Anvil(accounts=3) as node:
        yield node


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "node.db")
    yield db
    db.close()


@pytest.fixture
def emitter(chain: Anvil) -> Emitter:
    return Emitter(chain)


def free_port() -> int:
    """A port nothing listens on (bound, then released): a dead RPC endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config(urls: list[str], **overrides: Any) -> ChainSection:
    values: dict[str, Any] = {"rpc_urls": urls, "poll_interval_s": 0.05}
    values.update(overrides)
    return ChainSection(**values)


@asynccontextmanager
async def following(
    store: Store,
    emitter: Emitter,
    cfg: ChainSection,
    recorder: Recorder,
    bus: EventBus | None = None,
) -> AsyncIterator[EventFollower]:
    """Run a follower in the background for the block's duration, then stop it cleanly."""
    pool = RpcPool(cfg.rpc_urls, timeout_s=2.0, retries=1, backoff_s=0.05)
    follower = EventFollower(
        pool,
        cfg.ws_url,
        store,
        emitter.contracts,
        cfg,
        recorder.apply,
        on_reorg=recorder.on_reorg,
        bus=bus,
    )
    task = asyncio.create_task(follower.run())
    try:
        yield follower
    finally:
        await follower.stop()
        await task
        await pool.close()


def drain(sub: Subscription) -> list[Any]:
    events = []
    while not sub._queue.empty():
        item = sub._queue.get_nowait()
        if item is not None:
            events.append(item)
    return events


async def test_restart_mid_stream_misses_nothing_and_applies_nothing_twice(
    chain: Anvil, store: Store, emitter: Emitter
) -> None:
    recorder = Recorder(store)
    cfg = config([chain.http_url], ws_url=chain.ws_url)
    bus = EventBus()
    sub = bus.subscribe(ChainLogApplied, ChainHead)
    minting = asyncio.create_task(emitter.mint(40, pause_s=0.01))
    async with following(store, emitter, cfg, recorder, bus):
        await wait_until(lambda: len(recorder.calls) >= 10, what="the first ten logs")
    stopped_at = len(recorder.calls)
    await asyncio.sleep(0.2)  # events keep coming while no follower runs
    async with following(store, emitter, cfg, recorder, bus) as again:
        await minting
        want = emitter.chain_logs()
        await wait_until(lambda: recorder.rows() == want, what="every minted Transfer")
        assert again.synced
    assert stopped_at < 40
    assert len(want) == 40
    assert len(recorder.calls) == 40  # apply() once per log, across the restart
    applied = [e for e in drain(sub) if isinstance(e, ChainLogApplied)]
    assert sorted((e.tx_hash, e.log_index) for e in applied) == sorted(want)
    first = recorder.calls[0]
    assert first.contract == "token" and first.event == "Transfer"
    assert first.args["from"] == "0x" + "0" * 40
    assert first.args["to"] == emitter.receiver  # checksummed
    assert first.args["value"] == 1 and isinstance(first.args["value"], int)
    assert first.block_time > 0 and first.block_hash.startswith("0x")
    order = [(c.block_number, c.log_index) for c in recorder.calls]
    assert order == sorted(order)


async def test_dropped_websocket_through_tcp_relay_is_survived(
    chain: Anvil, store: Store, emitter: Emitter
) -> None:
    relay = await TcpRelay(chain.port).start()
    recorder = Recorder(store)
    bus = EventBus()
    sub = bus.subscribe(ChainConnection)
    cfg = config([chain.http_url], ws_url=relay.ws_url, poll_interval_s=0.2)
    try:
        async with following(store, emitter, cfg, recorder, bus):
            await wait_until(lambda: relay.accepted >= 1, what="the WebSocket to connect")
            await emitter.mint(5, pause_s=0.02)
            await wait_until(lambda: len(recorder.calls) >= 5, what="logs over the WebSocket")
            relay.refusing = True
            assert relay.cut() >= 2  # both legs of the live WebSocket
            await emitter.mint(5, pause_s=0.05)  # while the WebSocket is down: polled
            await wait_until(lambda: len(recorder.calls) >= 10, what="logs while reconnecting")
            relay.refusing = False
            accepted = relay.accepted
            await wait_until(lambda: relay.accepted > accepted, what="a new WebSocket")
            await emitter.mint(5, pause_s=0.02)
            want = emitter.chain_logs()
            await wait_until(lambda: recorder.rows() == want, what="every Transfer")
    finally:
        await relay.close()
    assert len(want) == 15 and len(recorder.calls) == 15
    states = [e.state for e in drain(sub)]
    assert "reconnecting" in states
    assert states[0] == "connected" and "connected" in states[states.index("reconnecting") :]


@pytest.mark.parametrize("live", ["websocket", "polling"])
async def test_reorg_of_depth_three_is_rolled_back_and_rescanned(
    chain: Anvil, store: Store, emitter: Emitter, live: str
) -> None:
    recorder = Recorder(store)
    bus = EventBus()
    sub = bus.subscribe(ChainReorged)
    cfg = config([chain.http_url], ws_url=chain.ws_url if live == "websocket" else "")
    async with following(store, emitter, cfg, recorder, bus) as follower:
        await emitter.mint(6)
        before = emitter.chain_logs()
        await wait_until(lambda: recorder.rows() == before, what="the first six Transfers")
        head = chain.block_number()
        dropped = {
            (str(x["transactionHash"]).lower(), int(x["logIndex"], 16))
            for x in chain.rpc("eth_getLogs", [{"fromBlock": hex(head - 2), "toBlock": hex(head)}])
        }
        assert len(dropped) == 3
        replacements = [  # different mints in the new blocks: different logs
            [
                {
                    "from": emitter.owner,
                    "to": emitter.token.address,
                    "data": emitter.token.encode_abi("mint", args=[emitter.receiver, amount]),
                    "gas": hex(200_000),
                },
                offset,
            ]
            for offset, amount in enumerate((1000, 2000))
        ]
        chain.rpc("anvil_reorg", [3, replacements])
        assert chain.block_number() == head
        chain.mine(1)  # the next head shows the follower the new chain
        after = emitter.chain_logs()
        assert not dropped & after
        await wait_until(lambda: recorder.rows() == after, what="the rescanned chain")
        assert follower.reorg_count >= 1
    amounts = recorder.amounts()
    assert sorted(amounts.values()) == [1, 2, 3, 1000, 2000]
    assert recorder.reorgs and recorder.reorgs[0] <= head - 3
    reorged = [e for e in drain(sub) if isinstance(e, ChainReorged)]
    assert reorged and reorged[0].fork_block == recorder.reorgs[0] and reorged[0].depth >= 3
    stored = {
        (str(tx), int(str(i)))
        for tx, i in store.query("SELECT tx_hash, log_index FROM chain_logs WHERE follower='main'")
    }
    assert stored == after


async def test_catch_up_in_chunks_of_two_blocks(
    chain: Anvil, store: Store, emitter: Emitter
) -> None:
    await emitter.mint(20)
    recorder = Recorder(store)
    cfg = config([chain.http_url], log_chunk_blocks=2)
    want = emitter.chain_logs()
    async with following(store, emitter, cfg, recorder) as follower:
        await wait_until(lambda: recorder.rows() == want, what="twenty Transfers in chunks")
        await wait_until(lambda: follower.synced, what="the follower to be synced")
    assert len(recorder.calls) == 20
    rows = store.query("SELECT block_number FROM chain_cursors WHERE name='main'")
    assert rows == [(chain.block_number(),)]


async def test_range_cap_halves_the_chunk(chain: Anvil, store: Store, emitter: Emitter) -> None:
    await emitter.mint(12)
    capped = await RangeCappingRpc(chain.http_url, max_blocks=3).start()
    recorder = Recorder(store)
    cfg = config([capped.url], log_chunk_blocks=1000)
    want = emitter.chain_logs()
    try:
        async with following(store, emitter, cfg, recorder):
            await wait_until(lambda: recorder.rows() == want, what="all Transfers under a cap")
    finally:
        await capped.close()
    assert len(recorder.calls) == 12
    assert capped.refused >= 1 and max(capped.served_ranges) <= 3


@asynccontextmanager
async def lagging(
    chain: Anvil, store: Store, emitter: Emitter, recorder: Recorder, **relay: Any
) -> AsyncIterator[tuple[EventFollower, LaggingLogsRpc]]:
    """A follower (driven by sync_once) behind a LaggingLogsRpc relay double."""
    lag = await LaggingLogsRpc(chain.http_url, **relay).start()
    cfg = config([lag.url])
    pool = RpcPool(cfg.rpc_urls, timeout_s=2.0, retries=1, backoff_s=0.05)
    follower = EventFollower(pool, "", store, emitter.contracts, cfg, recorder.apply)
    follower.logs_guard.backoff_s = 0.01
    try:
        yield follower, lag
    finally:
        await pool.close()
        await lag.close()


async def test_an_empty_get_logs_that_the_blooms_contradict_is_asked_again(
    chain: Anvil, store: Store, emitter: Emitter
) -> None:
    await emitter.mint(3)
    chain.mine(2)  # the range ends in blocks without our logs: the top of the range is checked
    recorder = Recorder(store)
    want = emitter.chain_logs()
    async with lagging(chain, store, emitter, recorder, lies=1) as (follower, lag):
        await follower.sync_once()
        assert lag.lied == 1 and follower.logs_guard.repeats == 1
        assert recorder.rows() == want and len(recorder.calls) == 3
        assert follower.cursor.number == chain.block_number()
        lag.lies += 1  # the next new block's logs are hidden once too (a one-block range)
        await emitter.mint(1)
        await follower.sync_once()
        assert lag.lied == 2 and recorder.rows() == emitter.chain_logs()


async def test_logs_left_out_every_time_keep_the_cursor_before_their_block(
    chain: Anvil, store: Store, emitter: Emitter
) -> None:
    chain.mine(3)
    start = chain.block_number()
    await emitter.mint(2)
    recorder = Recorder(store)
    async with lagging(chain, store, emitter, recorder, lies=10**6) as (follower, lag):
        follower.logs_guard.retries = 2
        with pytest.raises(LogsWithheld, match="keeps leaving out the logs of block"):
            await follower.sync_once()
        assert lag.range_queries == 3 and follower.cursor.number < start
        assert not recorder.calls
        assert not store.query("SELECT 1 FROM chain_cursors WHERE block_number >= ?", (start,))
        lag.lies = lag.lied  # the backend caught up
        await follower.sync_once()
        assert recorder.rows() == emitter.chain_logs() and len(recorder.calls) == 2


async def test_bloom_false_positives_do_not_hold_the_follower_back(
    chain: Anvil, store: Store, emitter: Emitter
) -> None:
    await emitter.mint(2)
    chain.mine(5)
    recorder = Recorder(store)
    async with lagging(chain, store, emitter, recorder, lies=0, saturate_blooms=True) as (
        follower,
        lag,
    ):
        await follower.sync_once()
        assert follower.cursor.number == chain.block_number()
        assert recorder.rows() == emitter.chain_logs()
        assert lag.hash_queries >= 5 and follower.logs_guard.repeats == 0


async def test_failover_from_a_dead_url(chain: Anvil, store: Store, emitter: Emitter) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    await emitter.mint(3)
    recorder = Recorder(store)
    cfg = config([dead, chain.http_url])
    async with following(store, emitter, cfg, recorder) as follower:
        await emitter.mint(3)
        want = emitter.chain_logs()
        await wait_until(lambda: recorder.rows() == want, what="Transfers via the second URL")
        assert follower.pool.current_url == chain.http_url
    assert len(recorder.calls) == 6


async def test_confirmations_hold_back_the_newest_blocks(
    chain: Anvil, store: Store, emitter: Emitter
) -> None:
    recorder = Recorder(store)
    bus = EventBus()
    sub = bus.subscribe(ChainHead)
    cfg = config([chain.http_url], ws_url=chain.ws_url, confirmations=2)
    async with following(store, emitter, cfg, recorder, bus) as follower:
        await emitter.mint(5)
        head = chain.block_number()
        await wait_until(lambda: follower.cursor.number == head - 2, what="head - 2 applied")
        await asyncio.sleep(0.3)
        assert follower.cursor.number == head - 2
        assert len(recorder.calls) == 3
        chain.mine(2)
        await wait_until(lambda: len(recorder.calls) == 5, what="the held-back blocks")
        assert follower.cursor.number == head
    heads = [e for e in drain(sub) if isinstance(e, ChainHead)]
    assert heads and heads[-1].applied_block == heads[-1].block_number - 2
    assert heads[-1].synced


async def test_a_failing_handler_stops_the_follower_and_commits_nothing(
    chain: Anvil, store: Store, emitter: Emitter
) -> None:
    await emitter.mint(3)
    recorder = Recorder(store)

    def apply(db: sqlite3.Connection, log: DecodedLog) -> None:
        recorder.apply(db, log)
        if log.args["value"] == 3:
            raise RuntimeError("handler bug")

    cfg = config([chain.http_url], log_chunk_blocks=1)
    pool = RpcPool(cfg.rpc_urls)
    follower = EventFollower(pool, "", store, emitter.contracts, cfg, apply)
    try:
        with pytest.raises(RuntimeError, match="handler bug"):
            await asyncio.wait_for(follower.run(), 60)
    finally:
        await pool.close()
    assert len(recorder.amounts()) == 2  # the third block's transaction was rolled back
    assert len(follower.tables.applied_logs()) == 2
    assert follower.cursor.number == chain.block_number() - 1


async def test_logs_bloom_check_agrees_with_real_blocks(chain: Anvil, emitter: Emitter) -> None:
    await emitter.mint(3)
    chain.mine(2)
    decoder = LogDecoder(emitter.contracts)
    other = LogDecoder({"x": ("0x" + "11" * 20, emitter.contracts["token"][1])})
    with_logs = {
        int(x["blockNumber"], 16) for x in chain.rpc("eth_getLogs", [{"fromBlock": "0x0"}])
    }
    for number in range(1, chain.block_number() + 1):
        bloom = chain.rpc("eth_getBlockByNumber", [hex(number), False])["logsBloom"]
        if number in with_logs:
            assert decoder.bloom_matches(bloom), number
        else:
            assert not decoder.bloom_matches(bloom), number
        assert not other.bloom_matches(bloom)  # no false positive on these tiny blocks


async def test_rpc_outage_is_reported_and_survived(
    chain: Anvil, store: Store, emitter: Emitter
) -> None:
    relay = await TcpRelay(chain.port).start()  # the only HTTP RPC goes through the relay
    recorder = Recorder(store)
    bus = EventBus()
    sub = bus.subscribe(ChainConnection)
    cfg = config([f"http://127.0.0.1:{relay.port}"])
    try:
        async with following(store, emitter, cfg, recorder, bus):
            await emitter.mint(2)
            await wait_until(lambda: len(recorder.calls) == 2, what="logs before the outage")
            relay.refusing = True
            relay.cut()
            down: list[ChainConnection] = []

            def saw_down() -> bool:
                down.extend(e for e in drain(sub) if e.state == "down")
                return bool(down)

            await wait_until(saw_down, what="a 'down' connection event")
            await emitter.mint(2)
            relay.refusing = False
            want = emitter.chain_logs()
            await wait_until(lambda: recorder.rows() == want, what="logs after the outage")
    finally:
        await relay.close()
    assert "no RPC endpoint answered" in down[0].detail and "127.0.0.1" in down[0].url
    assert len(recorder.calls) == 4
