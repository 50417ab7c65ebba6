"""NodeRegistry's marketplace hooks on a real anvil: the owner names the marketplace once;
only it marks open work (claimed jobs, which block unregistering) and slashes stake (sent to
it)."""

from __future__ import annotations

from chain_kit import (
    ETH,
    MIN_STAKE,
    REFUSES_ETH,
    Suite,
    events,
    gas_cost,
    register,
    reverts,
    send,
)

from fabstir_tui.engine.chain import Anvil


def wire(suite: Suite) -> None:
    """Name suite.market (a plain account) as the registry's marketplace."""
    send(suite.w3, suite.nodes.functions.setMarketplace(suite.market), suite.owner)


def test_the_owner_names_the_marketplace_once(suite: Suite) -> None:
    w3, nodes, owner, market, other = suite.w3, suite.nodes, suite.owner, suite.market, suite.other
    assert nodes.functions.owner().call() == owner
    assert nodes.functions.marketplace().call() == ETH
    with reverts(nodes, "NotOwner", other):
        send(w3, nodes.functions.setMarketplace(other), other)
    with reverts(nodes, "ZeroAddress"):
        send(w3, nodes.functions.setMarketplace(ETH), owner)
    receipt = send(w3, nodes.functions.setMarketplace(market), owner)
    assert events(nodes, "MarketplaceSet", receipt) == [{"marketplace": market}]
    assert nodes.functions.marketplace().call() == market
    with reverts(nodes, "MarketplaceAlreadySet", market):
        send(w3, nodes.functions.setMarketplace(other), owner)


def test_only_the_marketplace_calls_the_hooks(suite: Suite) -> None:
    w3, nodes, host, other = suite.w3, suite.nodes, suite.host, suite.other
    register(suite)
    for wired in (False, True):
        if wired:
            wire(suite)
        for call in (
            nodes.functions.openWork(host),
            nodes.functions.closeWork(host),
            nodes.functions.slash(host, 1),
        ):
            with reverts(nodes, "NotMarketplace", other):
                send(w3, call, other)


def test_open_work_blocks_unregistering_until_closed(suite: Suite) -> None:
    w3, nodes, host, market, other = suite.w3, suite.nodes, suite.host, suite.market, suite.other
    wire(suite)
    with reverts(nodes, "NotRegistered", other):
        send(w3, nodes.functions.openWork(other), market)
    register(suite)
    with reverts(nodes, "NoOpenWork", host):
        send(w3, nodes.functions.closeWork(host), market)
    receipt = send(w3, nodes.functions.openWork(host), market)
    assert events(nodes, "WorkOpened", receipt) == [{"host": host, "openWork": 1}]
    send(w3, nodes.functions.openWork(host), market)
    assert nodes.functions.openWorkOf(host).call() == 2
    with reverts(nodes, "OpenWork", host, 2):
        send(w3, nodes.functions.unregister(), host)
    receipt = send(w3, nodes.functions.closeWork(host), market)
    assert events(nodes, "WorkClosed", receipt) == [{"host": host, "openWork": 1}]
    send(w3, nodes.functions.closeWork(host), market)
    send(w3, nodes.functions.unregister(), host)
    assert not nodes.functions.isRegistered(host).call()


def test_slash_sends_stake_to_the_marketplace_capped_by_the_stake(suite: Suite) -> None:
    w3, nodes, host, market, other = suite.w3, suite.nodes, suite.host, suite.market, suite.other
    wire(suite)
    with reverts(nodes, "NotRegistered", other):
        send(w3, nodes.functions.slash(other, 1), market)
    register(suite)
    assert nodes.functions.slash(host, 12_345).call({"from": market}) == 12_345
    before = w3.eth.get_balance(market)
    receipt = send(w3, nodes.functions.slash(host, 12_345), market)
    assert events(nodes, "Slashed", receipt) == [
        {"host": host, "amount": 12_345, "remainingStake": MIN_STAKE - 12_345, "to": market}
    ]
    assert w3.eth.get_balance(market) == before + 12_345 - gas_cost(receipt)
    assert nodes.functions.stakeOf(host).call() == MIN_STAKE - 12_345
    # More than is left takes what is left; the host stays registered with nothing staked.
    assert nodes.functions.slash(host, MIN_STAKE).call({"from": market}) == MIN_STAKE - 12_345
    receipt = send(w3, nodes.functions.slash(host, MIN_STAKE), market)
    assert events(nodes, "Slashed", receipt)[0]["amount"] == MIN_STAKE - 12_345
    assert nodes.functions.stakeOf(host).call() == 0
    assert w3.eth.get_balance(nodes.address) == 0
    assert nodes.functions.isRegistered(host).call()
    receipt = send(w3, nodes.functions.slash(host, 1), market)  # nothing left: nothing moves
    assert events(nodes, "Slashed", receipt) == [
        {"host": host, "amount": 0, "remainingStake": 0, "to": market}
    ]


def test_a_marketplace_that_refuses_the_slashed_stake_leaves_it_staked(
    suite: Suite, devchain: Anvil
) -> None:
    w3, nodes, host, market = suite.w3, suite.nodes, suite.host, suite.market
    wire(suite)
    register(suite)
    devchain.rpc("anvil_setCode", [market, REFUSES_ETH])
    devchain.rpc("anvil_impersonateAccount", [market])
    try:
        with reverts(nodes, "StakeTransferFailed", market, 7):
            send(w3, nodes.functions.slash(host, 7), market)
    finally:
        devchain.rpc("anvil_stopImpersonatingAccount", [market])
    assert nodes.functions.stakeOf(host).call() == MIN_STAKE
