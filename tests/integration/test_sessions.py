"""JobMarketplace sessions on a real anvil: create, prove, complete, time out, to the wei.

Numbers (worked out by hand): the host charges PRICE = 2,345,678 per million tokens and the
client deposits 5,000. Proofs of 1,000 and 234 tokens make 1,234: charge 1,234 * 2,345,678 / 1e6
= 2,894.566652 -> 2,894; fee 2,894 * 250 / 10,000 = 72.35 -> 72; host 2,822; refund 5,000 - 2,894
= 2,106. The deposit covers at most 2,132 tokens (2,132 * 2,345,678 / 1e6 = 5,000.985496 -> 5,000);
2,133 tokens would cost 5,003.331174 -> 5,003 > 5,000.

Sessions are never slashed, so they do not lock the host's stake: a host may unregister with a
session open, and the session still settles and pays it.
"""

from __future__ import annotations

from typing import Any

import pytest
from chain_kit import ETH, MIN_STAKE, MODEL_A, MODEL_B, MODEL_C, events, gas_cost, reverts, send
from market_kit import (
    ACTIVE,
    COMPLETED,
    PRICE,
    TIMED_OUT,
    Market,
    at_time,
    balance,
    claimable,
    earned,
    fund,
    register_host,
    send_at,
    session,
)
from web3 import Web3

KINDS = ["eth", "erc20"]
DEPOSIT = 5_000
INTERVAL = 500
TIMEOUT = 300
PROOF = Web3.keccak(text="proof")
ZERO32 = b"\0" * 32


def open_session(
    market: Market, token: str = ETH, deposit: int = DEPOSIT, max_price: int = PRICE
) -> int:
    """The client opens a session with the registered m.host; returns its id."""
    fund(market, token, market.client, deposit)
    call = market.jobs.functions.createSession(
        market.host, MODEL_A, token, deposit, max_price, INTERVAL, TIMEOUT
    )
    send(market.w3, call, market.client, value=deposit if token == ETH else 0)
    return int(market.jobs.functions.sessionCount().call())


def prove(market: Market, session_id: int, tokens: int) -> None:
    send(market.w3, market.jobs.functions.submitProofOfWork(session_id, tokens, PROOF), market.host)


@pytest.mark.parametrize("kind", KINDS)
def test_create_session_takes_the_deposit_at_the_hosts_price(market: Market, kind: str) -> None:
    w3, jobs, nodes, client, host = market.w3, market.jobs, market.nodes, market.client, market.host
    token = market.coin(kind)
    register_host(market, price_token=token)
    fund(market, token, client, DEPOSIT)
    before = balance(market, token, client)
    call = jobs.functions.createSession(host, MODEL_A, token, DEPOSIT, PRICE + 1, INTERVAL, TIMEOUT)
    receipt = send(w3, call, client, value=DEPOSIT if token == ETH else 0)
    gas = gas_cost(receipt) if token == ETH else 0
    assert balance(market, token, client) == before - DEPOSIT - gas
    assert balance(market, token, jobs.address) == DEPOSIT
    assert events(jobs, "SessionCreated", receipt) == [
        {
            "sessionId": 1,
            "client": client,
            "host": host,
            "modelId": MODEL_A,
            "token": token,
            "deposit": DEPOSIT,
            "pricePerMillion": PRICE,
            "proofInterval": INTERVAL,
            "timeout": TIMEOUT,
        }
    ]
    stamp = w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert session(market, 1) == {
        "client": client,
        "createdAt": stamp,
        "status": ACTIVE,
        "host": host,
        "lastActivity": stamp,
        "token": token,
        "timeout": TIMEOUT,
        "modelId": MODEL_A,
        "deposit": DEPOSIT,
        "pricePerMillion": PRICE,
        "proofInterval": INTERVAL,
        "tokensProven": 0,
        "lastProofHash": ZERO32,
    }
    assert jobs.functions.sessionCount().call() == 1
    assert nodes.functions.openWorkOf(host).call() == 0  # a session locks no stake
    assert events(nodes, "WorkOpened", receipt) == []
    # A later price change does not touch the open session.
    send(w3, nodes.functions.setPrice(MODEL_A, 1), host)
    assert session(market, 1)["pricePerMillion"] == PRICE


def test_create_session_refusals(market: Market) -> None:
    w3, jobs, client, host, other = market.w3, market.jobs, market.client, market.host, market.other
    token = market.token.address

    def create(host: str, model: bytes, token: str, deposit: int, max_price: int = PRICE) -> Any:
        return jobs.functions.createSession(
            host, model, token, deposit, max_price, INTERVAL, TIMEOUT
        )

    def create_with(interval: int, timeout: int) -> Any:
        return jobs.functions.createSession(host, MODEL_A, ETH, 5, PRICE, interval, timeout)

    with reverts(jobs, "ZeroDeposit"):
        send(w3, create(host, MODEL_A, ETH, 0), client)
    with reverts(jobs, "ZeroMaxPrice"):
        send(w3, create(host, MODEL_A, ETH, 5, max_price=0), client, value=5)
    with reverts(jobs, "ZeroProofInterval"):
        send(w3, create_with(0, TIMEOUT), client, value=5)
    with reverts(jobs, "ZeroTimeout"):
        send(w3, create_with(INTERVAL, 0), client, value=5)
    with reverts(jobs, "ModelNotApproved", MODEL_C):
        send(w3, create(host, MODEL_C, ETH, 5), client, value=5)
    with reverts(jobs, "NotRegistered", host):
        send(w3, create(host, MODEL_A, ETH, 5), client, value=5)
    register_host(market)
    with reverts(jobs, "NotRegistered", other):
        send(w3, create(other, MODEL_A, ETH, 5), client, value=5)
    with reverts(jobs, "ModelNotServed", host, MODEL_B):
        send(w3, create(host, MODEL_B, ETH, 5), client, value=5)
    with reverts(jobs, "HostPriceTooHigh", host, PRICE, PRICE - 1):
        send(w3, create(host, MODEL_A, ETH, 5, max_price=PRICE - 1), client, value=5)
    with reverts(jobs, "TokenNotPriced", host, token, ETH):  # the host priced in ETH
        send(w3, create(host, MODEL_A, token, 5), client)
    with reverts(jobs, "ValueMismatch", 4, 5):
        send(w3, create(host, MODEL_A, ETH, 5), client, value=4)
    send(w3, market.nodes.functions.setPriceToken(token), host)  # now it prices in FUSD
    with reverts(jobs, "TokenNotPriced", host, ETH, token):
        send(w3, create(host, MODEL_A, ETH, 5), client, value=5)
    with reverts(jobs, "ValueMismatch", 1, 0):
        send(w3, create(host, MODEL_A, token, 5), client, value=1)
    with reverts(jobs, "TokenTransferFailed", token):  # nothing approved
        send(w3, create(host, MODEL_A, token, 5), client)
    assert jobs.functions.sessionCount().call() == 0


def test_a_host_cannot_raise_its_price_under_a_pending_session(market: Market) -> None:
    # The front-run: the client saw PRICE and sends createSession; the host raises its price a
    # thousandfold in the same block, ahead of the client's transaction. Without a maximum the
    # session would open at the new price and one proof of 2,132 / 1,000 -> 3 tokens would take
    # the whole deposit. With it, the client's transaction fails and its deposit stays home.
    w3, jobs, nodes, client, host, chain = (
        market.w3,
        market.jobs,
        market.nodes,
        market.client,
        market.host,
        market.chain,
    )
    register_host(market)
    raised = PRICE * 1_000
    create = jobs.functions.createSession(host, MODEL_A, ETH, DEPOSIT, PRICE, INTERVAL, TIMEOUT)
    chain.rpc("evm_setAutomine", [False])
    try:
        fee = int(w3.eth.gas_price)
        front = nodes.functions.setPrice(MODEL_A, raised).transact(
            {
                "from": host,
                "gas": 200_000,
                "maxFeePerGas": 10 * fee,
                "maxPriorityFeePerGas": 5 * fee,
            }
        )
        victim = create.transact(
            {
                "from": client,
                "value": DEPOSIT,
                "gas": 500_000,
                "maxFeePerGas": 10 * fee,
                "maxPriorityFeePerGas": 1,
            }
        )
        chain.mine(1)
    finally:
        chain.rpc("evm_setAutomine", [True])
    first = w3.eth.wait_for_transaction_receipt(front)
    second = w3.eth.wait_for_transaction_receipt(victim)
    assert first["blockNumber"] == second["blockNumber"]
    assert first["transactionIndex"] < second["transactionIndex"]  # the host got in first
    assert (first["status"], second["status"]) == (1, 0)  # and the client's session failed
    assert jobs.functions.sessionCount().call() == 0
    assert w3.eth.get_balance(jobs.address) == 0
    with reverts(jobs, "HostPriceTooHigh", host, raised, PRICE):  # why: the client's maximum
        send(w3, create, client, value=DEPOSIT)
    session_id = open_session(market, max_price=raised)  # a client that accepts the new price
    assert session(market, session_id)["pricePerMillion"] == raised


@pytest.mark.parametrize("end", ["complete", "timeout"])
def test_a_host_may_unregister_with_a_session_open_and_is_still_paid(
    market: Market, end: str
) -> None:
    # A session is never slashed, so it does not hold the host's stake: a client cannot lock a
    # host in with tiny, very long sessions. The session lives on: the host may prove, and the
    # settlement pays it through HostEarnings to its last payout address.
    w3, jobs, nodes, client, host, other = (
        market.w3,
        market.jobs,
        market.nodes,
        market.client,
        market.host,
        market.other,
    )
    register_host(market)
    session_id = open_session(market)
    prove(market, session_id, 1_000)
    receipt = send(w3, nodes.functions.unregister(), host)
    assert events(nodes, "NodeUnregistered", receipt) == [
        {"host": host, "stakeReturned": MIN_STAKE}
    ]
    assert not nodes.functions.isRegistered(host).call()
    prove(market, session_id, 234)
    if end == "complete":
        receipt = send(w3, jobs.functions.completeSession(session_id), client)
        got = events(jobs, "SessionCompleted", receipt)[0]
    else:
        ends = session(market, session_id)["lastActivity"] + TIMEOUT
        receipt = send_at(market, jobs.functions.timeoutSession(session_id), other, ends)
        got = events(jobs, "SessionTimedOut", receipt)[0]
    assert (got["charge"], got["fee"], got["hostAmount"], got["refund"]) == (
        2_894,
        72,
        2_822,
        2_106,
    )
    assert events(market.earnings, "Credited", receipt) == [
        {"host": host, "token": ETH, "amount": 2_822}
    ]
    assert claimable(market, client, ETH) == 2_106
    before = w3.eth.get_balance(market.payout)
    receipt = send(w3, market.earnings.functions.withdraw(ETH), host)
    assert events(market.earnings, "Withdrawn", receipt)[0]["to"] == market.payout
    assert w3.eth.get_balance(market.payout) == before + 2_822


def test_proofs_add_up_until_the_deposit_is_spent(market: Market) -> None:
    w3, jobs, host = market.w3, market.jobs, market.host
    register_host(market)
    session_id = open_session(market)
    receipt = send(w3, jobs.functions.submitProofOfWork(session_id, 1_000, PROOF), host)
    assert events(jobs, "ProofSubmitted", receipt) == [
        {"sessionId": session_id, "tokens": 1_000, "totalTokens": 1_000, "proofHash": PROOF}
    ]
    stamp = w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    got = session(market, session_id)
    assert (got["tokensProven"], got["lastActivity"], got["lastProofHash"]) == (1_000, stamp, PROOF)
    with reverts(jobs, "DepositExceeded", session_id, 5_003, DEPOSIT):  # 2,133 tokens
        send(w3, jobs.functions.submitProofOfWork(session_id, 1_133, PROOF), host)
    prove(market, session_id, 1_132)  # 2,132 tokens cost exactly the deposit
    assert session(market, session_id)["tokensProven"] == 2_132
    with reverts(jobs, "DepositExceeded", session_id, 5_003, DEPOSIT):
        send(w3, jobs.functions.submitProofOfWork(session_id, 1, PROOF), host)


def test_proof_refusals(market: Market) -> None:
    w3, jobs, client, host = market.w3, market.jobs, market.client, market.host
    with reverts(jobs, "UnknownSession", 9):
        send(w3, jobs.functions.submitProofOfWork(9, 1, PROOF), host)
    register_host(market)
    session_id = open_session(market)
    with reverts(jobs, "NotSessionHost", session_id, client):
        send(w3, jobs.functions.submitProofOfWork(session_id, 1, PROOF), client)
    with reverts(jobs, "ZeroTokens"):
        send(w3, jobs.functions.submitProofOfWork(session_id, 0, PROOF), host)
    send(w3, jobs.functions.completeSession(session_id), client)
    with reverts(jobs, "WrongSessionStatus", session_id, COMPLETED):
        send(w3, jobs.functions.submitProofOfWork(session_id, 1, PROOF), host)


@pytest.mark.parametrize("who", ["client", "host"])
@pytest.mark.parametrize("kind", KINDS)
def test_complete_pays_what_was_proven_and_refunds_the_rest(
    market: Market, kind: str, who: str
) -> None:
    w3, jobs, nodes, client, host = market.w3, market.jobs, market.nodes, market.client, market.host
    token = market.coin(kind)
    register_host(market, price_token=token)
    session_id = open_session(market, token)
    prove(market, session_id, 1_000)
    prove(market, session_id, 234)
    caller = client if who == "client" else host
    receipt = send(w3, jobs.functions.completeSession(session_id), caller)
    assert events(jobs, "SessionCompleted", receipt) == [
        {
            "sessionId": session_id,
            "by": caller,
            "tokens": 1_234,
            "charge": 2_894,
            "fee": 72,
            "hostAmount": 2_822,
            "refund": 2_106,
        }
    ]
    assert session(market, session_id)["status"] == COMPLETED
    assert earned(market, token) == 2_822
    assert claimable(market, market.treasury, token) == 72
    assert claimable(market, client, token) == 2_106
    assert balance(market, token, jobs.address) == 72 + 2_106
    assert nodes.functions.openWorkOf(host).call() == 0
    with reverts(jobs, "WrongSessionStatus", session_id, COMPLETED):
        send(w3, jobs.functions.completeSession(session_id), caller)
    before = balance(market, token, client)
    receipt = send(w3, jobs.functions.withdraw(token), client)
    gas = gas_cost(receipt) if token == ETH else 0
    assert balance(market, token, client) == before + 2_106 - gas


def test_complete_refusals_and_a_session_spent_in_full(market: Market) -> None:
    w3, jobs, client, host = market.w3, market.jobs, market.client, market.host
    with reverts(jobs, "UnknownSession", 1):
        send(w3, jobs.functions.completeSession(1), client)
    register_host(market)
    session_id = open_session(market)
    with reverts(jobs, "NotSessionParty", session_id, market.other):
        send(w3, jobs.functions.completeSession(session_id), market.other)
    prove(market, session_id, 2_132)
    receipt = send(w3, jobs.functions.completeSession(session_id), host)
    got = events(jobs, "SessionCompleted", receipt)[0]
    # charge 5,000 (the whole deposit); fee 5,000 * 250 / 10,000 = 125; host 4,875; refund 0.
    assert (got["charge"], got["fee"], got["hostAmount"], got["refund"]) == (5_000, 125, 4_875, 0)
    assert claimable(market, client, ETH) == 0


def test_a_session_with_no_proofs_refunds_the_whole_deposit(market: Market) -> None:
    w3, jobs, client = market.w3, market.jobs, market.client
    register_host(market)
    session_id = open_session(market)
    receipt = send(w3, jobs.functions.completeSession(session_id), market.host)
    got = events(jobs, "SessionCompleted", receipt)[0]
    assert (got["charge"], got["fee"], got["hostAmount"], got["refund"]) == (0, 0, 0, DEPOSIT)
    assert events(market.earnings, "Credited", receipt) == []
    assert claimable(market, client, ETH) == DEPOSIT


@pytest.mark.parametrize("kind", KINDS)
def test_a_stalled_session_times_out_from_last_activity_plus_timeout(
    market: Market, kind: str
) -> None:
    w3, jobs, chain, host, other = market.w3, market.jobs, market.chain, market.host, market.other
    token = market.coin(kind)
    register_host(market, price_token=token)
    session_id = open_session(market, token)
    prove(market, session_id, 1_234)
    ends = session(market, session_id)["lastActivity"] + TIMEOUT
    at_time(market, ends - 2)
    snap = chain.snapshot()
    prove_call = jobs.functions.submitProofOfWork(session_id, 1, PROOF)
    send_at(market, prove_call, host, ends - 1)  # the last second still takes a proof
    chain.revert(snap)
    at_time(market, ends - 1)
    with reverts(jobs, "SessionStillLive", session_id, ends):
        send(w3, jobs.functions.timeoutSession(session_id), other)
    snap = chain.snapshot()
    at_time(market, ends)
    with reverts(jobs, "SessionTimeoutPassed", session_id, ends):
        send(w3, prove_call, host)
    chain.revert(snap)
    receipt = send_at(market, jobs.functions.timeoutSession(session_id), other, ends)
    assert events(jobs, "SessionTimedOut", receipt) == [
        {
            "sessionId": session_id,
            "tokens": 1_234,
            "charge": 2_894,
            "fee": 72,
            "hostAmount": 2_822,
            "refund": 2_106,
        }
    ]
    assert session(market, session_id)["status"] == TIMED_OUT
    assert earned(market, token) == 2_822
    assert claimable(market, market.client, token) == 2_106
    assert claimable(market, market.treasury, token) == 72
    assert market.nodes.functions.openWorkOf(host).call() == 0
    with reverts(jobs, "WrongSessionStatus", session_id, TIMED_OUT):
        send(w3, jobs.functions.timeoutSession(session_id), other)
    with reverts(jobs, "UnknownSession", 2):
        send(w3, jobs.functions.timeoutSession(2), other)
