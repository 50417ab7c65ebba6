"""NodeRegistry on a real anvil: stake in and out to the wei, models, prices and the one token
they are in, every refusal."""

from __future__ import annotations

from typing import Any

from chain_kit import (
    MIN_STAKE,
    MODEL_A,
    MODEL_B,
    MODEL_C,
    REFUSES_ETH,
    Suite,
    events,
    gas_cost,
    reentering_code,
    register,
    reverts,
    send,
)
from eth_utils import keccak

from fabstir_tui.engine.chain import Anvil

ZERO = "0x0000000000000000000000000000000000000000"
META = '{"peer_id":"","multiaddrs":[],"api_url":"","gpu":{}}'


def test_register_takes_the_stake_and_records_models_and_prices(suite: Suite) -> None:
    w3, nodes, host, payout = suite.w3, suite.nodes, suite.host, suite.payout
    stake = MIN_STAKE + 12_345
    before = w3.eth.get_balance(host)
    fusd = suite.token.address
    call = nodes.functions.register([MODEL_A, MODEL_B], [2_000, 150_000], fusd, payout, META)
    receipt = send(w3, call, host, value=stake)
    assert w3.eth.get_balance(host) == before - stake - gas_cost(receipt)
    assert w3.eth.get_balance(nodes.address) == stake
    assert events(nodes, "NodeRegistered", receipt) == [
        {"host": host, "stake": stake, "payout": payout, "metadata": META}
    ]
    assert events(nodes, "ModelPriceSet", receipt) == [
        {"host": host, "modelId": MODEL_A, "pricePerMillion": 2_000},
        {"host": host, "modelId": MODEL_B, "pricePerMillion": 150_000},
    ]
    assert events(nodes, "ModelsUpdated", receipt) == [{"host": host, "models": [MODEL_A, MODEL_B]}]
    assert events(nodes, "PriceTokenSet", receipt) == [{"host": host, "priceToken": fusd}]
    assert nodes.functions.isRegistered(host).call()
    assert nodes.functions.getNode(host).call() == [
        stake,
        payout,
        META,
        [MODEL_A, MODEL_B],
        True,
        fusd,
    ]
    assert nodes.functions.priceTokenOf(host).call() == fusd
    assert nodes.functions.priceOf(host, MODEL_B).call() == 150_000
    assert nodes.functions.serves(host, MODEL_A).call()
    assert not nodes.functions.serves(host, MODEL_C).call()
    assert nodes.functions.payoutOf(host).call() == payout
    assert nodes.functions.minStake().call() == MIN_STAKE


def test_register_refusals(suite: Suite) -> None:
    w3, nodes, host, payout = suite.w3, suite.nodes, suite.host, suite.payout

    def reg(models: list[bytes], prices: list[int], to: str = payout) -> Any:
        return nodes.functions.register(models, prices, ZERO, to, "")

    with reverts(nodes, "StakeTooLow", MIN_STAKE - 1, MIN_STAKE):
        send(w3, reg([MODEL_A], [1]), host, value=MIN_STAKE - 1)
    with reverts(nodes, "ZeroPayout"):
        send(w3, reg([MODEL_A], [1], ZERO), host, value=MIN_STAKE)
    with reverts(nodes, "NoModels"):
        send(w3, reg([], []), host, value=MIN_STAKE)
    with reverts(nodes, "LengthMismatch", 2, 1):
        send(w3, reg([MODEL_A, MODEL_B], [1]), host, value=MIN_STAKE)
    with reverts(nodes, "ModelNotApproved", MODEL_C):
        send(w3, reg([MODEL_A, MODEL_C], [1, 1]), host, value=MIN_STAKE)
    with reverts(nodes, "ZeroPrice", MODEL_B):
        send(w3, reg([MODEL_A, MODEL_B], [1, 0]), host, value=MIN_STAKE)
    with reverts(nodes, "DuplicateModel", MODEL_A):
        send(w3, reg([MODEL_A, MODEL_A], [1, 2]), host, value=MIN_STAKE)
    register(suite)
    with reverts(nodes, "AlreadyRegistered", host):
        send(w3, reg([MODEL_B], [1]), host, value=MIN_STAKE)


def test_updates_replace_models_prices_payout_metadata_and_add_stake(suite: Suite) -> None:
    w3, nodes, host, other = suite.w3, suite.nodes, suite.host, suite.other
    register(suite)
    receipt = send(w3, nodes.functions.setModels([MODEL_B], [7_777]), host)
    assert events(nodes, "ModelsUpdated", receipt) == [{"host": host, "models": [MODEL_B]}]
    assert nodes.functions.priceOf(host, MODEL_A).call() == 0  # the old model is dropped
    assert nodes.functions.priceOf(host, MODEL_B).call() == 7_777
    receipt = send(w3, nodes.functions.setPrice(MODEL_B, 8_000), host)
    assert events(nodes, "ModelPriceSet", receipt) == [
        {"host": host, "modelId": MODEL_B, "pricePerMillion": 8_000}
    ]
    receipt = send(w3, nodes.functions.setPayout(other), host)
    assert events(nodes, "PayoutUpdated", receipt) == [{"host": host, "payout": other}]
    receipt = send(w3, nodes.functions.setMetadata(META), host)
    assert events(nodes, "MetadataUpdated", receipt) == [{"host": host, "metadata": META}]
    receipt = send(w3, nodes.functions.addStake(), host, value=5)
    assert events(nodes, "StakeAdded", receipt) == [
        {"host": host, "amount": 5, "total": MIN_STAKE + 5}
    ]
    assert nodes.functions.priceTokenOf(host).call() == ZERO  # register's default: ETH
    fusd = suite.token.address
    receipt = send(w3, nodes.functions.setPriceToken(fusd), host)
    assert events(nodes, "PriceTokenSet", receipt) == [{"host": host, "priceToken": fusd}]
    assert nodes.functions.priceTokenOf(host).call() == fusd
    assert nodes.functions.priceOf(host, MODEL_B).call() == 8_000  # prices are left as they are
    assert nodes.functions.getNode(host).call() == [
        MIN_STAKE + 5,
        other,
        META,
        [MODEL_B],
        True,
        fusd,
    ]
    assert w3.eth.get_balance(nodes.address) == MIN_STAKE + 5


def test_update_refusals(suite: Suite) -> None:
    w3, nodes, host, other = suite.w3, suite.nodes, suite.host, suite.other
    for call, value in [
        (nodes.functions.setModels([MODEL_A], [1]), 0),
        (nodes.functions.setPrice(MODEL_A, 1), 0),
        (nodes.functions.setPayout(other), 0),
        (nodes.functions.setMetadata("x"), 0),
        (nodes.functions.setPriceToken(suite.token.address), 0),
        (nodes.functions.addStake(), 1),
        (nodes.functions.unregister(), 0),
    ]:
        with reverts(nodes, "NotRegistered", other):
            send(w3, call, other, value=value)
    register(suite)
    with reverts(nodes, "ModelNotServed", host, MODEL_B):
        send(w3, nodes.functions.setPrice(MODEL_B, 1), host)
    with reverts(nodes, "ZeroPrice", MODEL_A):
        send(w3, nodes.functions.setPrice(MODEL_A, 0), host)
    with reverts(nodes, "ZeroPayout"):
        send(w3, nodes.functions.setPayout(ZERO), host)
    with reverts(nodes, "ZeroAmount"):
        send(w3, nodes.functions.addStake(), host)
    with reverts(nodes, "ModelNotApproved", MODEL_C):
        send(w3, nodes.functions.setModels([MODEL_C], [1]), host)
    with reverts(nodes, "NoModels"):
        send(w3, nodes.functions.setModels([], []), host)


def test_unregister_returns_the_whole_stake_to_the_wei(suite: Suite) -> None:
    w3, nodes, host, payout = suite.w3, suite.nodes, suite.host, suite.payout
    register(suite, stake=MIN_STAKE + 1, price_token=suite.token.address)
    send(w3, nodes.functions.addStake(), host, value=2)
    before = w3.eth.get_balance(host)
    receipt = send(w3, nodes.functions.unregister(), host)
    assert events(nodes, "NodeUnregistered", receipt) == [
        {"host": host, "stakeReturned": MIN_STAKE + 3}
    ]
    assert w3.eth.get_balance(host) == before + MIN_STAKE + 3 - gas_cost(receipt)
    assert w3.eth.get_balance(nodes.address) == 0
    assert not nodes.functions.isRegistered(host).call()
    assert nodes.functions.getNode(host).call() == [0, ZERO, "", [], False, ZERO]
    assert nodes.functions.priceTokenOf(host).call() == ZERO
    assert nodes.functions.priceOf(host, MODEL_A).call() == 0
    assert nodes.functions.payoutOf(host).call() == payout  # earnings still find the payout
    register(suite)  # and the host may come back
    assert nodes.functions.isRegistered(host).call()


def test_a_host_that_refuses_its_stake_back_keeps_it_registered(
    suite: Suite, devchain: Anvil
) -> None:
    w3, nodes, host = suite.w3, suite.nodes, suite.host
    register(suite)
    devchain.rpc("anvil_setCode", [host, REFUSES_ETH])
    devchain.rpc("anvil_impersonateAccount", [host])
    try:
        with reverts(nodes, "StakeTransferFailed", host, MIN_STAKE):
            send(w3, nodes.functions.unregister(), host)
    finally:
        devchain.rpc("anvil_stopImpersonatingAccount", [host])
    assert nodes.functions.isRegistered(host).call()
    assert w3.eth.get_balance(nodes.address) == MIN_STAKE


def test_a_host_that_reenters_unregister_meets_the_guard(suite: Suite, devchain: Anvil) -> None:
    w3, nodes, host = suite.w3, suite.nodes, suite.host
    register(suite)
    devchain.rpc("anvil_setCode", [host, reentering_code(nodes.address, "unregister()")])
    devchain.rpc("anvil_impersonateAccount", [host])
    try:
        send(w3, nodes.functions.unregister(), host)
    finally:
        devchain.rpc("anvil_stopImpersonatingAccount", [host])
    assert w3.eth.get_storage_at(host, 0) == keccak(text="Reentrancy()")[:4] + bytes(28)
    assert w3.eth.get_balance(nodes.address) == 0  # the stake left once, not twice
