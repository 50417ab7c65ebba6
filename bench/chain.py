"""Event latency: our EventFollower vs a bare web3.py WebSocket log subscription, same run.

Each event is one mint of the test token on anvil with automine, so the transaction is
included in its block by the time eth_sendTransaction answers. Latency is measured from
that answer (the tx's inclusion) to (a) our follower's ChainLogApplied on the bus, after its
SQLite commit, and (b) the bare subscription's log notice. Events are sent one at a time.
Prints medians, p95 and the ratio, and writes bench/results/chain.json.
Run: `.venv/bin/python bench/chain.py --events 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from web3 import AsyncWeb3, Web3
from web3.providers.persistent import WebSocketProvider

from fabstir_tui.config import ChainSection
from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.chain.deploy import deploy_contract
from fabstir_tui.engine.chain.events import ChainLogApplied
from fabstir_tui.engine.chain.follower import EventFollower
from fabstir_tui.engine.chain.rpc_pool import RpcPool
from fabstir_tui.engine.events import EventBus
from fabstir_tui.engine.store import Store


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def bare_listener(ws_url: str, address: str, seen: dict[str, float]) -> None:
    """The baseline: web3.py's own WebSocket logs subscription, nothing else."""
    async with AsyncWeb3(WebSocketProvider(ws_url)) as w3:
        await w3.eth.subscribe("logs", {"address": address})
        async for message in w3.socket.process_subscriptions():
            result: Any = message["result"]
            seen.setdefault("0x" + bytes(result["transactionHash"]).hex(), time.perf_counter())


async def follower_listener(bus: EventBus, seen: dict[str, float]) -> None:
    sub = bus.subscribe(ChainLogApplied)
    async for event in sub:
        assert isinstance(event, ChainLogApplied)
        seen.setdefault(event.tx_hash, time.perf_counter())


async def wait_for(keys: list[str], *tables: dict[str, float], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(key in table for key in keys for table in tables):
        if time.monotonic() > deadline:
            raise TimeoutError(f"event {keys} not seen within {timeout} s")
        await asyncio.sleep(0.0005)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between events")
    parser.add_argument("--out", type=Path, default=Path("bench/results/chain.json"))
    args = parser.parse_args()

    with Anvil(accounts=2) as chain, tempfile.TemporaryDirectory() as tmp:
        w3 = Web3(Web3.HTTPProvider(chain.http_url))
        owner, receiver = w3.eth.accounts[:2]
        token = deploy_contract(w3, "FabstirTestToken", owner)
        store = Store(Path(tmp) / "bench.db")
        with store.transaction() as db:
            db.execute("CREATE TABLE bench_mints (tx TEXT, idx INTEGER, amount TEXT)")

        def apply(db: Any, log: Any) -> None:
            db.execute(
                "INSERT INTO bench_mints VALUES (?, ?, ?)",
                (log.tx_hash, log.log_index, str(log.args["value"])),
            )

        cfg = ChainSection(
            rpc_urls=[chain.http_url], ws_url=chain.ws_url, start_block=chain.block_number() + 1
        )
        bus = EventBus()
        pool = RpcPool(cfg.rpc_urls)
        follower = EventFollower(
            pool, cfg.ws_url, store, {"token": (token.address, token.abi)}, cfg, apply, bus=bus
        )
        ours: dict[str, float] = {}
        bare: dict[str, float] = {}
        tasks = [
            asyncio.create_task(follower.run()),
            asyncio.create_task(follower_listener(bus, ours)),
            asyncio.create_task(bare_listener(chain.ws_url, token.address, bare)),
        ]
        await asyncio.sleep(0.5)  # both subscriptions in place
        lat_ours: list[float] = []
        lat_bare: list[float] = []
        async with aiohttp.ClientSession() as http:
            for i in range(args.warmup + args.events):
                tx = {
                    "from": owner,
                    "to": token.address,
                    "data": token.encode_abi("mint", args=[receiver, i + 1]),
                    "gas": hex(100_000),
                }
                body = {"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction", "params": [tx]}
                async with http.post(chain.http_url, json=body) as response:
                    tx_hash = str((await response.json())["result"]).lower()
                included = time.perf_counter()
                await wait_for([tx_hash], ours, bare)
                if i >= args.warmup:
                    lat_ours.append((ours[tx_hash] - included) * 1000)
                    lat_bare.append((bare[tx_hash] - included) * 1000)
                await asyncio.sleep(args.gap_ms / 1000)
        await follower.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()
        applied = store.query("SELECT COUNT(*) FROM bench_mints")[0][0]
        calls_per_event = pool.calls / (args.warmup + args.events)
        commits: list[float] = []  # what durability costs on this disk, same store, same run
        for i in range(args.events):
            start = time.perf_counter()
            with store.transaction() as db:
                db.execute("INSERT INTO bench_mints VALUES (?, ?, ?)", ("commit", i, "0"))
            commits.append((time.perf_counter() - start) * 1000)
        store.close()

    result = {
        "events": args.events,
        "anvil": "automine",
        "measured_from": "eth_sendTransaction answer (tx included)",
        "bare_ws_logs_ms": {"median": statistics.median(lat_bare), "p95": pct(lat_bare, 0.95)},
        "follower_ms": {"median": statistics.median(lat_ours), "p95": pct(lat_ours, 0.95)},
        "ratio_median": statistics.median(lat_ours) / statistics.median(lat_bare),
        "ratio_p95": pct(lat_ours, 0.95) / pct(lat_bare, 0.95),
        "applied_rows": applied,
        "rpc_calls_per_event": calls_per_event,
        "store_commit_ms": {"median": statistics.median(commits), "p95": pct(commits, 0.95)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| path | median | p95 |")
    print("|---|---:|---:|")
    b, o = result["bare_ws_logs_ms"], result["follower_ms"]
    print(f"| bare web3.py WS logs subscription | {b['median']:.2f} ms | {b['p95']:.2f} ms |")
    print(f"| EventFollower (applied + committed) | {o['median']:.2f} ms | {o['p95']:.2f} ms |")
    c = result["store_commit_ms"]
    print(f"| (one SQLite commit, synchronous=FULL) | {c['median']:.2f} ms | {c['p95']:.2f} ms |")
    print(
        f"\nratio follower/bare: median {result['ratio_median']:.2f}x, "
        f"p95 {result['ratio_p95']:.2f}x over {args.events} events ({applied} rows applied, "
        f"{calls_per_event:.2f} RPC calls per event)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
