"""The earnings ledger fed by the real follower from a real anvil: exact figures after a
payment, escrow held for submitted work, and a reorg that takes a payment away again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_kit import ETH, send
from market_kit import OUTPUT, RECEIPTS, Market, deploy_market, post, submitted

from fabstir_tui.config import ChainSection
from fabstir_tui.engine.chain import Anvil, load_artifact
from fabstir_tui.engine.chain.follower import EventFollower
from fabstir_tui.engine.chain.ledger import Ledger
from fabstir_tui.engine.chain.rpc_pool import RpcPool
from fabstir_tui.engine.store import Store

# market_kit's host price is 2,345,678 per million tokens, the fee 250 bps, escrow 10,000.
# 1,234 tokens: charge = 1,234 x 2,345,678 / 1e6 = 2,894 (2,894.566 down);
# fee = 2,894 x 250 / 10,000 = 72 (72.35 down); host = 2,894 - 72 = 2,822.
HOST_SHARE = 2_822


@pytest.fixture
def market() -> Iterator[Market]:
    with Anvil(chain_id=31337, accounts=6) as chain:
        yield deploy_market(chain)


def follower_for(m: Market, store: Store, ledger: Ledger) -> tuple[EventFollower, RpcPool]:
    d = m.deployment
    chain = ChainSection(rpc_urls=[m.chain.http_url], start_block=d.start_block)
    spec = {
        name: (address, load_artifact(name).abi)
        for name, address in (
            ("HostEarnings", d.host_earnings),
            ("JobMarketplace", d.job_marketplace),
        )
    }
    pool = RpcPool(chain.rpc_urls)
    follower = EventFollower(pool, "", store, spec, chain, ledger.apply, ledger.on_reorg)
    return follower, pool


@pytest.mark.parametrize("kind", ["eth", "erc20"])
async def test_ledger_figures_are_exact_and_a_reorg_takes_a_payment_back(
    tmp_path: Path, market: Market, kind: str
) -> None:
    m, token = market, market.coin(kind)
    store = Store(tmp_path / "node.db")
    ledger = Ledger(store, m.host)
    follower, pool = follower_for(m, store, ledger)
    try:
        paid = submitted(m, token)
        send(m.w3, m.jobs.functions.releasePayment(paid), m.client)  # the client accepts
        waiting, _ = post(m, token)  # a second job, answered but not released yet
        send(m.w3, m.jobs.functions.claimJob(waiting), m.host)
        send(m.w3, m.jobs.functions.submitResult(waiting, 1_234, OUTPUT, RECEIPTS), m.host)
        await follower.sync_once()

        figures = ledger.summary(fee_bps=250)[token]
        assert figures.earned_total == figures.earned_today == figures.earned_7d == HOST_SHARE
        assert figures.held_in_escrow == HOST_SHARE  # the waiting job pays the same
        assert figures.jobs_awaiting_release == 1
        entries = ledger.entries()
        assert [(e.kind, e.reference, e.amount) for e in entries] == [
            ("credit", f"job {paid}", HOST_SHARE)
        ]
        assert m.earnings.functions.balanceOf(m.host, token).call() == HOST_SHARE

        # The release of the second job lands, then a reorg of depth 1 drops its block.
        send(m.w3, m.jobs.functions.releasePayment(waiting), m.client)
        await follower.sync_once()
        assert ledger.summary(fee_bps=250)[token].earned_total == 2 * HOST_SHARE
        m.chain.rpc("anvil_reorg", [1, []])
        m.chain.mine(1)
        await follower.sync_once()
        assert follower.reorg_count == 1
        figures = ledger.summary(fee_bps=250)[token]
        assert figures.earned_total == HOST_SHARE  # the dropped payment is gone...
        assert figures.held_in_escrow == HOST_SHARE  # ...and its job is waiting again
        assert figures.jobs_awaiting_release == 1
        assert len(ledger.entries()) == 1

        # Withdrawing is a ledger row too, to the payout address.
        send(m.w3, m.earnings.functions.withdraw(token), m.host)
        await follower.sync_once()
        figures = ledger.summary(fee_bps=250)[token]
        assert figures.withdrawn_total == HOST_SHARE
        kinds = [(e.kind, e.counterparty) for e in ledger.entries()]
        assert kinds == [("withdraw", m.payout), ("credit", "")]
    finally:
        await pool.close()
        store.close()


async def test_other_hosts_payments_are_not_ours(tmp_path: Path, market: Market) -> None:
    m = market
    store = Store(tmp_path / "node.db")
    ledger = Ledger(store, m.other)  # we are not the host that gets paid
    follower, pool = follower_for(m, store, ledger)
    try:
        job = submitted(m, ETH)
        send(m.w3, m.jobs.functions.releasePayment(job), m.client)
        await follower.sync_once()
        assert ledger.entries() == []
        assert ledger.summary(fee_bps=250) == {}
        rows = store.query("SELECT status FROM market_jobs WHERE job_id=?", (job,))
        assert rows == [("released",)]  # the market mirror still knows every job
    finally:
        await pool.close()
        store.close()
