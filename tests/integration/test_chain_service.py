"""The node's chain side on a real anvil: mainnet opt-in, and a changed contract set (or key)
rebuilding the ledger from the chain instead of silently skipping what came before."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chain_kit import send
from market_kit import Market, deploy_market, submitted

from fabstir_tui.config import Config
from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.node import Node

PASSPHRASE = "chain service test passphrase"


async def until(condition: Callable[[], object], what: str, bound_s: float = 30.0) -> None:
    """Wait on a condition; the bound only stops a hung test."""
    deadline = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def node_config(tmp_path: Path, m: Market, **chain: Any) -> Config:
    d = m.deployment
    values: dict[str, Any] = {
        "chain_id": d.chain_id,
        "rpc_urls": [m.chain.http_url],
        "node_registry": d.node_registry,
        "host_earnings": d.host_earnings,
        "job_marketplace": d.job_marketplace,
        "start_block": d.start_block,
        "poll_interval_s": 0.1,
        "keystore": str(tmp_path / "no-keystore.json"),
    }
    values.update(chain)
    return Config.model_validate(
        {
            "paths": {"data_dir": str(tmp_path / "data"), "models_dirs": [str(tmp_path)]},
            "telemetry": {"gpu_backend": "none"},
            "chain": values,
        }
    )


@pytest.mark.parametrize("allow", [False, True])
async def test_signing_off_the_devnet_needs_the_mainnet_opt_in(tmp_path: Path, allow: bool) -> None:
    with Anvil(chain_id=8453, accounts=6) as chain:  # Base mainnet's chain id, on anvil
        m = deploy_market(chain)
        node = Node(node_config(tmp_path, m, chain_id=8453, allow_mainnet=allow))
        await node.start()
        try:
            refusal = node.chain_refusal() or ""
            if allow:
                assert "allow_mainnet" not in refusal  # refused only for the missing key
                assert "keys new" in refusal or "cannot sign" in refusal
            else:
                assert "chain 8453 is not a devnet or Base Sepolia" in refusal
                assert "chain.allow_mainnet = true" in refusal
        finally:
            await node.stop()


def synced(node: Node) -> bool:
    status = node.chain_status()
    return status is not None and status.synced


async def test_a_changed_contract_set_rebuilds_the_ledger_from_the_start(tmp_path: Path) -> None:
    with Anvil(chain_id=31337, accounts=6) as chain:
        m = deploy_market(chain)
        job = submitted(m)
        send(m.w3, m.jobs.functions.releasePayment(job), m.client)
        # First run follows HostEarnings only: no market mirror.
        first = Node(node_config(tmp_path, m, job_marketplace=""))
        await first.start()
        try:
            await until(lambda: synced(first), "first sync")
            assert first.store is not None
            assert first.store.query("SELECT count(*) FROM market_jobs") == [(0,)]
        finally:
            await first.stop()
        # Second run also follows the marketplace: a new cursor from start_block, so the job
        # posted before the first run's cursor is found, and nothing is counted twice.
        second = Node(node_config(tmp_path, m))
        await second.start()
        try:
            store = second.store
            assert store is not None
            await until(
                lambda: store.query("SELECT status FROM market_jobs") == [("released",)],
                "the job mirrored",
            )
            assert len(store.query("SELECT name FROM chain_cursors")) == 1
            assert store.query("SELECT count(DISTINCT follower) FROM chain_logs") == [(1,)]
        finally:
            await second.stop()
