"""FabstirTestToken, ModelRegistry and HostEarnings on a real anvil, driven with web3.py."""

from __future__ import annotations

import pytest
from chain_kit import (
    ETH,
    MODEL_A,
    MODEL_C,
    REFUSES_ETH,
    Suite,
    deploy,
    events,
    gas_cost,
    reentering_code,
    register,
    reverts,
    send,
)
from eth_utils import keccak

from fabstir_tui.engine.chain import Anvil


def test_token_mints_transfers_and_spends_allowances(suite: Suite) -> None:
    w3, token, owner, host, other = suite.w3, suite.token, suite.owner, suite.host, suite.other
    assert token.functions.decimals().call() == 6
    assert token.functions.symbol().call() == "FUSD"
    receipt = send(w3, token.functions.mint(host, 5_000_000), owner)
    assert events(token, "Transfer", receipt) == [{"from": ETH, "to": host, "value": 5_000_000}]
    send(w3, token.functions.transfer(other, 1_250_000), host)
    receipt = send(w3, token.functions.approve(other, 2_000_000), host)
    assert events(token, "Approval", receipt) == [
        {"owner": host, "spender": other, "value": 2_000_000}
    ]
    send(w3, token.functions.transferFrom(host, owner, 1_500_000), other)
    assert token.functions.allowance(host, other).call() == 500_000
    assert token.functions.balanceOf(host).call() == 2_250_000
    assert token.functions.balanceOf(other).call() == 1_250_000
    assert token.functions.balanceOf(owner).call() == 1_500_000
    assert token.functions.totalSupply().call() == 5_000_000
    send(w3, token.functions.approve(other, 2**256 - 1), host)
    send(w3, token.functions.transferFrom(host, other, 250_000), other)
    assert token.functions.allowance(host, other).call() == 2**256 - 1  # infinite stays infinite


def test_token_refusals(suite: Suite) -> None:
    w3, token, owner, host, other = suite.w3, suite.token, suite.owner, suite.host, suite.other
    with reverts(token, "NotOwner", host):
        send(w3, token.functions.mint(host, 1), host)
    with reverts(token, "ZeroAddress"):
        send(w3, token.functions.mint(ETH, 1), owner)
    send(w3, token.functions.mint(host, 100), owner)
    with reverts(token, "InsufficientBalance", host, 100, 101):
        send(w3, token.functions.transfer(other, 101), host)
    with reverts(token, "ZeroAddress"):
        send(w3, token.functions.transfer(ETH, 1), host)
    with reverts(token, "ZeroAddress"):
        send(w3, token.functions.approve(ETH, 1), host)
    send(w3, token.functions.approve(other, 40), host)
    with reverts(token, "InsufficientAllowance", other, 40, 41):
        send(w3, token.functions.transferFrom(host, other, 41), other)


def test_model_registry_approves_and_revokes(suite: Suite) -> None:
    w3, models, owner = suite.w3, suite.models, suite.owner
    assert models.functions.isApproved(MODEL_A).call()
    assert not models.functions.isApproved(MODEL_C).call()
    receipt = send(w3, models.functions.approveModel(MODEL_C, "Llama-3.2-1B"), owner)
    assert events(models, "ModelApproved", receipt) == [
        {"modelId": MODEL_C, "name": "Llama-3.2-1B"}
    ]
    assert models.functions.isApproved(MODEL_C).call()
    receipt = send(w3, models.functions.revokeModel(MODEL_C), owner)
    assert events(models, "ModelRevoked", receipt) == [{"modelId": MODEL_C}]
    assert not models.functions.isApproved(MODEL_C).call()
    assert models.functions.modelName(MODEL_C).call() == "Llama-3.2-1B"
    send(w3, models.functions.approveModel(MODEL_C, "Llama-3.2-1B-Q4"), owner)  # re-approve
    assert models.functions.modelName(MODEL_C).call() == "Llama-3.2-1B-Q4"


def test_model_registry_refusals(suite: Suite) -> None:
    w3, models, owner, other = suite.w3, suite.models, suite.owner, suite.other
    with reverts(models, "NotOwner", other):
        send(w3, models.functions.approveModel(MODEL_C, "x"), other)
    with reverts(models, "NotOwner", other):
        send(w3, models.functions.revokeModel(MODEL_A), other)
    with reverts(models, "ZeroModelId"):
        send(w3, models.functions.approveModel(b"\0" * 32, "x"), owner)
    with reverts(models, "EmptyName"):
        send(w3, models.functions.approveModel(MODEL_C, ""), owner)
    with reverts(models, "ModelAlreadyApproved", MODEL_A):
        send(w3, models.functions.approveModel(MODEL_A, "again"), owner)
    with reverts(models, "ModelNotApproved", MODEL_C):
        send(w3, models.functions.revokeModel(MODEL_C), owner)


def test_earnings_in_eth_are_withdrawn_to_the_payout_address_to_the_wei(suite: Suite) -> None:
    w3, earnings, host, payout, market = (
        suite.w3,
        suite.earnings,
        suite.host,
        suite.payout,
        suite.market,
    )
    register(suite)
    receipt = send(w3, earnings.functions.credit(host, ETH, 7 * 10**15), market, value=7 * 10**15)
    assert events(earnings, "Credited", receipt) == [
        {"host": host, "token": ETH, "amount": 7 * 10**15}
    ]
    send(w3, earnings.functions.credit(host, ETH, 3 * 10**15), market, value=3 * 10**15)
    assert earnings.functions.balanceOf(host, ETH).call() == 10**16
    assert w3.eth.get_balance(earnings.address) == 10**16
    host_before, payout_before = w3.eth.get_balance(host), w3.eth.get_balance(payout)
    receipt = send(w3, earnings.functions.withdraw(ETH), host)
    assert events(earnings, "Withdrawn", receipt) == [
        {"host": host, "token": ETH, "to": payout, "amount": 10**16}
    ]
    assert w3.eth.get_balance(payout) == payout_before + 10**16
    assert w3.eth.get_balance(host) == host_before - gas_cost(receipt)
    assert w3.eth.get_balance(earnings.address) == 0
    assert earnings.functions.balanceOf(host, ETH).call() == 0


def test_token_earnings_are_pulled_from_the_marketplace_and_withdrawn(suite: Suite) -> None:
    w3, token, earnings = suite.w3, suite.token, suite.earnings
    host, payout, market, other = suite.host, suite.payout, suite.market, suite.other
    send(w3, token.functions.mint(market, 9_000_000), suite.owner)
    send(w3, token.functions.approve(earnings.address, 9_000_000), market)
    receipt = send(w3, earnings.functions.credit(host, token.address, 2_500_000), market)
    assert events(earnings, "Credited", receipt) == [
        {"host": host, "token": token.address, "amount": 2_500_000}
    ]
    send(w3, earnings.functions.credit(other, token.address, 1_000_000), market)
    assert token.functions.balanceOf(earnings.address).call() == 3_500_000
    assert token.functions.balanceOf(market).call() == 5_500_000
    register(suite)  # payout comes from NodeRegistry at withdrawal time
    send(w3, earnings.functions.withdraw(token.address), host)
    assert token.functions.balanceOf(payout).call() == 2_500_000
    # `other` never registered, so it is paid itself.
    receipt = send(w3, earnings.functions.withdraw(token.address), other)
    assert events(earnings, "Withdrawn", receipt)[0]["to"] == other
    assert token.functions.balanceOf(other).call() == 1_000_000
    assert token.functions.balanceOf(earnings.address).call() == 0


def test_earnings_refusals(suite: Suite, devchain: Anvil) -> None:
    w3, token, earnings = suite.w3, suite.token, suite.earnings
    owner, host, market, other = suite.owner, suite.host, suite.market, suite.other
    with reverts(earnings, "NotOwner", other):
        send(w3, earnings.functions.setMarketplace(other), other)
    with reverts(earnings, "ZeroAddress"):
        send(w3, earnings.functions.setMarketplace(ETH), owner)
    with reverts(earnings, "NotMarketplace", other):
        send(w3, earnings.functions.credit(host, ETH, 1), other, value=1)
    with reverts(earnings, "ZeroAddress"):
        send(w3, earnings.functions.credit(ETH, ETH, 1), market, value=1)
    with reverts(earnings, "ZeroAmount"):
        send(w3, earnings.functions.credit(host, ETH, 0), market)
    with reverts(earnings, "ValueMismatch", 5, 6):
        send(w3, earnings.functions.credit(host, ETH, 6), market, value=5)
    with reverts(earnings, "ValueMismatch", 1, 0):
        send(w3, earnings.functions.credit(host, token.address, 6), market, value=1)
    with reverts(earnings, "TokenTransferFailed", token.address):  # no allowance given
        send(w3, earnings.functions.credit(host, token.address, 6), market)
    with reverts(earnings, "TokenTransferFailed", other):  # an address with no code
        send(w3, earnings.functions.credit(host, other, 6), market)
    with reverts(earnings, "NothingToWithdraw", host, ETH):
        send(w3, earnings.functions.withdraw(ETH), host)
    register(suite)
    send(w3, earnings.functions.credit(host, ETH, 100), market, value=100)
    devchain.rpc("anvil_setCode", [suite.payout, REFUSES_ETH])
    with reverts(earnings, "EthTransferFailed", suite.payout, 100):
        send(w3, earnings.functions.withdraw(ETH), host)
    assert earnings.functions.balanceOf(host, ETH).call() == 100  # nothing lost


def test_the_owner_names_the_earnings_marketplace_once(suite: Suite) -> None:
    # Re-pointing HostEarnings would strand every live job of the old marketplace (its credits
    # would be refused), so the marketplace is named once, as in NodeRegistry.
    w3, owner, market, other = suite.w3, suite.owner, suite.market, suite.other
    fresh = deploy(w3, "HostEarnings", owner, suite.nodes.address)
    assert fresh.functions.marketplace().call() == ETH
    receipt = send(w3, fresh.functions.setMarketplace(market), owner)
    assert events(fresh, "MarketplaceSet", receipt) == [{"previous": ETH, "marketplace": market}]
    assert fresh.functions.marketplace().call() == market
    with reverts(fresh, "MarketplaceAlreadySet", market):
        send(w3, fresh.functions.setMarketplace(other), owner)
    with reverts(fresh, "NotOwner", other):  # the owner check still comes first
        send(w3, fresh.functions.setMarketplace(other), other)
    # The suite's earnings, named by deploy_suite, refuse a second marketplace as well.
    with reverts(suite.earnings, "MarketplaceAlreadySet", market):
        send(w3, suite.earnings.functions.setMarketplace(other), owner)
    assert suite.earnings.functions.marketplace().call() == market


def test_the_revert_check_itself_fails_on_a_wrong_error_or_none(suite: Suite) -> None:
    w3, token, owner, host = suite.w3, suite.token, suite.owner, suite.host
    with pytest.raises(AssertionError, match="NotOwner"), reverts(token, "NotOwner", owner):
        send(w3, token.functions.mint(host, 1), host)  # right error, wrong argument
    with pytest.raises(AssertionError, match="ZeroAddress"), reverts(token, "ZeroAddress"):
        send(w3, token.functions.mint(host, 1), host)  # another error
    with pytest.raises(AssertionError, match="succeeded"), reverts(token, "NotOwner", host):
        send(w3, token.functions.mint(host, 1), owner)  # no revert at all


def test_a_payout_that_reenters_withdraw_meets_the_guard(suite: Suite, devchain: Anvil) -> None:
    w3, earnings, host, payout, market = (
        suite.w3,
        suite.earnings,
        suite.host,
        suite.payout,
        suite.market,
    )
    register(suite)
    send(w3, earnings.functions.credit(host, ETH, 500), market, value=500)
    devchain.rpc("anvil_setCode", [payout, reentering_code(earnings.address, "withdraw(address)")])
    before = w3.eth.get_balance(payout)
    send(w3, earnings.functions.withdraw(ETH), host)
    # The reentrant withdraw was refused with Reentrancy(); the payout was paid exactly once.
    assert w3.eth.get_storage_at(payout, 0) == keccak(text="Reentrancy()")[:4] + bytes(28)
    assert w3.eth.get_balance(payout) == before + 500
    assert w3.eth.get_balance(earnings.address) == 0
