"""JobMarketplace open jobs on a real anvil: every function, every refusal, money to the wei.

Numbers used throughout (worked out by hand): the host charges PRICE = 2,345,678 base units per
million tokens; a job with 1,234 tokens used costs 1,234 * 2,345,678 / 1e6 = 2,894.566652 → 2,894;
the 2.5 % fee is 2,894 * 250 / 10,000 = 72.35 → 72; the host gets 2,894 - 72 = 2,822; of an
escrow of 10,000 the client gets 10,000 - 2,894 = 7,106 back. The same figures hold in wei (ETH)
and in 1e-6 units of the 6-decimal test token.
"""

from __future__ import annotations

from typing import Any

import pytest
from chain_kit import (
    ETH,
    MIN_STAKE,
    MODEL_A,
    MODEL_B,
    MODEL_C,
    REFUSES_ETH,
    deploy,
    events,
    gas_cost,
    reentering_code,
    reverts,
    send,
)
from eth_utils import keccak
from market_kit import (
    ARBITRATION,
    BOND,
    CANCELLED,
    CHALLENGED,
    CLAIMED,
    ESCROW,
    EXPIRED,
    FEE_BPS,
    MAX_TOKENS,
    OPEN,
    OUTPUT,
    PRICE,
    PROMPT,
    RECEIPTS,
    REFUNDED,
    RELEASED,
    SLASH_BPS,
    SUBMITTED,
    TTL,
    WINDOW,
    Market,
    at_time,
    balance,
    claimable,
    claimed,
    earned,
    fund,
    job,
    now,
    post,
    register_host,
    send_at,
    submitted,
)

KINDS = ["eth", "erc20"]
ZERO32 = b"\0" * 32
CHARGE, FEE, HOST_GETS, REFUND = 2_894, 72, 2_822, 7_106  # for 1,234 tokens of ESCROW
SLASHED = MIN_STAKE * SLASH_BPS // 10_000  # 10 % of 0.1 ETH = 0.01 ETH


def test_deploy_suite_wires_the_marketplace(market: Market) -> None:
    jobs, d = market.jobs, market.deployment
    assert jobs.functions.nodeRegistry().call() == d.node_registry
    assert jobs.functions.modelRegistry().call() == d.model_registry
    assert jobs.functions.hostEarnings().call() == d.host_earnings
    assert jobs.functions.treasury().call() == market.treasury == d.treasury
    assert jobs.functions.arbiter().call() == market.owner == d.arbiter
    assert jobs.functions.feeBps().call() == FEE_BPS
    assert jobs.functions.disputeWindow().call() == WINDOW
    assert jobs.functions.challengeBond().call() == BOND
    assert jobs.functions.slashBps().call() == SLASH_BPS
    assert jobs.functions.arbitrationWindow().call() == ARBITRATION
    assert market.earnings.functions.marketplace().call() == jobs.address
    assert market.nodes.functions.marketplace().call() == jobs.address
    assert market.nodes.functions.owner().call() == market.owner
    assert jobs.functions.jobCount().call() == 0
    assert jobs.functions.sessionCount().call() == 0


def test_constructor_refusals(market: Market) -> None:
    w3, owner, nodes, earnings = market.w3, market.owner, market.nodes, market.earnings
    jobs = market.jobs
    good = [nodes.address, earnings.address, owner, owner, 250, 3600, BOND, 1000, 7200]
    for index in range(4):
        args = list(good)
        args[index] = ETH
        with reverts(jobs, "ZeroAddress"):
            deploy(w3, "JobMarketplace", owner, *args)
    with reverts(jobs, "FeeTooHigh", 10_001):
        deploy(w3, "JobMarketplace", owner, *good[:4], 10_001, *good[5:])
    with reverts(jobs, "SlashTooHigh", 10_001):
        deploy(w3, "JobMarketplace", owner, *good[:7], 10_001, good[8])
    with reverts(jobs, "ZeroArbitrationWindow"):  # an arbiter with no time at all
        deploy(w3, "JobMarketplace", owner, *good[:8], 0)
    # Edges allowed: the whole charge as fee, no dispute window, no bond, the whole stake, 1 s.
    full = deploy(w3, "JobMarketplace", owner, *good[:4], 10_000, 0, 0, 10_000, 1)
    assert full.functions.feeBps().call() == 10_000
    assert full.functions.arbitrationWindow().call() == 1


# ------------------------------------------------------------------------------------ posting


@pytest.mark.parametrize("kind", KINDS)
def test_post_job_takes_the_escrow_and_records_the_job(market: Market, kind: str) -> None:
    w3, jobs, client, token = market.w3, market.jobs, market.client, market.coin(kind)
    fund(market, token, client, ESCROW)
    before = balance(market, token, client)
    deadline = now(market) + TTL
    call = jobs.functions.postJob(MODEL_A, PROMPT, MAX_TOKENS, PRICE, deadline, token, ESCROW)
    receipt = send(w3, call, client, value=ESCROW if token == ETH else 0)
    gas = gas_cost(receipt) if token == ETH else 0
    assert balance(market, token, client) == before - ESCROW - gas
    assert balance(market, token, jobs.address) == ESCROW
    assert events(jobs, "JobPosted", receipt) == [
        {
            "jobId": 1,
            "client": client,
            "modelId": MODEL_A,
            "token": token,
            "escrow": ESCROW,
            "maxTokens": MAX_TOKENS,
            "maxPricePerMillion": PRICE,
            "deadline": deadline,
            "promptHash": PROMPT,
        }
    ]
    assert jobs.functions.jobCount().call() == 1
    assert job(market, 1) == {
        "client": client,
        "deadline": deadline,
        "status": OPEN,
        "token": token,
        "claimedAt": 0,
        "host": ETH,
        "submittedAt": 0,
        "challengedAt": 0,
        "modelId": MODEL_A,
        "promptHash": PROMPT,
        "escrow": ESCROW,
        "maxTokens": MAX_TOKENS,
        "maxPricePerMillion": PRICE,
        "pricePerMillion": 0,
        "tokensUsed": 0,
        "outputHash": ZERO32,
        "receiptRoot": ZERO32,
    }
    assert jobs.functions.disputeEndsAt(1).call() == 0
    assert jobs.functions.arbitrationEndsAt(1).call() == 0
    second, _ = post(market, token)
    assert second == 2


def test_post_job_refusals(market: Market) -> None:
    w3, jobs, client, token = market.w3, market.jobs, market.client, market.token.address
    later = now(market) + TTL

    def post_call(
        model: bytes = MODEL_A, tokens: int = 10, price: int = 1, deadline: int = later
    ) -> Any:
        return jobs.functions.postJob(model, PROMPT, tokens, price, deadline, ETH, 5)

    with reverts(jobs, "ModelNotApproved", MODEL_C):
        send(w3, post_call(model=MODEL_C), client, value=5)
    with reverts(jobs, "ZeroEscrow"):
        send(w3, jobs.functions.postJob(MODEL_A, PROMPT, 10, 1, later, ETH, 0), client)
    with reverts(jobs, "ZeroMaxTokens"):
        send(w3, post_call(tokens=0), client, value=5)
    with reverts(jobs, "ZeroMaxPrice"):
        send(w3, post_call(price=0), client, value=5)
    at_time(market, now(market) + 5)
    with reverts(jobs, "DeadlineNotInFuture", now(market), now(market)):
        send(w3, post_call(deadline=now(market)), client, value=5)
    with reverts(jobs, "ValueMismatch", 4, 5):
        send(w3, post_call(), client, value=4)
    erc20 = jobs.functions.postJob(MODEL_A, PROMPT, 10, 1, later, token, 5)
    with reverts(jobs, "ValueMismatch", 1, 0):
        send(w3, erc20, client, value=1)
    with reverts(jobs, "TokenTransferFailed", token):  # no allowance, no balance
        send(w3, erc20, client)
    no_code = jobs.functions.postJob(MODEL_A, PROMPT, 10, 1, later, market.other, 5)
    with reverts(jobs, "TokenTransferFailed", market.other):
        send(w3, no_code, client)
    assert jobs.functions.jobCount().call() == 0


# ------------------------------------------------------------------------- claim and unclaim


def test_claim_records_host_price_and_time_and_locks_the_stake(market: Market) -> None:
    w3, jobs, nodes, host = market.w3, market.jobs, market.nodes, market.host
    register_host(market)
    job_id, _ = post(market, max_price=PRICE + 1)
    receipt = send(w3, jobs.functions.claimJob(job_id), host)
    assert events(jobs, "JobClaimed", receipt) == [
        {"jobId": job_id, "host": host, "pricePerMillion": PRICE}  # the host's, not the max
    ]
    stamp = w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    got = job(market, job_id)
    assert (got["status"], got["host"], got["pricePerMillion"]) == (CLAIMED, host, PRICE)
    assert got["claimedAt"] == stamp
    assert nodes.functions.openWorkOf(host).call() == 1
    assert events(nodes, "WorkOpened", receipt) == [{"host": host, "openWork": 1}]
    with reverts(nodes, "OpenWork", host, 1):  # no unregistering away from a claimed job
        send(w3, nodes.functions.unregister(), host)


def test_claim_refusals(market: Market) -> None:
    w3, jobs, host, other, owner = market.w3, market.jobs, market.host, market.other, market.owner
    with reverts(jobs, "UnknownJob", 1):
        send(w3, jobs.functions.claimJob(1), host)
    job_id, _ = post(market, max_price=PRICE - 1)
    with reverts(jobs, "NotRegistered", host):
        send(w3, jobs.functions.claimJob(job_id), host)
    register_host(market)
    with reverts(jobs, "PriceTooHigh", job_id, PRICE, PRICE - 1):
        send(w3, jobs.functions.claimJob(job_id), host)
    other_model, _ = post(market, model=MODEL_B)
    with reverts(jobs, "ModelNotServed", host, MODEL_B):
        send(w3, jobs.functions.claimJob(other_model), host)
    job_a, _ = post(market)
    send(w3, market.models.functions.revokeModel(MODEL_A), owner)
    with reverts(jobs, "ModelNotApproved", MODEL_A):
        send(w3, jobs.functions.claimJob(job_a), host)
    send(w3, market.models.functions.approveModel(MODEL_A, "again"), owner)
    deadline = job(market, job_a)["deadline"]
    at_time(market, deadline - 2)
    send_at(market, jobs.functions.claimJob(job_a), host, deadline - 1)  # last second: fine
    register_host(market, host=other)
    with reverts(jobs, "WrongJobStatus", job_a, CLAIMED):
        send(w3, jobs.functions.claimJob(job_a), other)
    late, _ = post(market, ttl=10)
    at_time(market, job(market, late)["deadline"])
    with reverts(jobs, "DeadlinePassed", late, job(market, late)["deadline"]):
        send(w3, jobs.functions.claimJob(late), other)


def test_a_host_claims_only_jobs_paid_in_its_price_token(market: Market) -> None:
    # A price of 2,345,678 per million means 2.3 FUSD to a host that priced in FUSD but only
    # 2.3e-12 ETH if it were paid in wei: a job in another token than the one the host's prices
    # are in is refused, whichever way round.
    w3, jobs, nodes, host, other = market.w3, market.jobs, market.nodes, market.host, market.other
    erc20 = market.token.address
    register_host(market)  # priced in ETH
    register_host(market, host=other, price_token=erc20)  # priced in FUSD
    eth_job, _ = post(market, ETH)
    token_job, _ = post(market, erc20)
    with reverts(jobs, "TokenNotPriced", host, erc20, ETH):
        send(w3, jobs.functions.claimJob(token_job), host)
    with reverts(jobs, "TokenNotPriced", other, ETH, erc20):
        send(w3, jobs.functions.claimJob(eth_job), other)
    send(w3, jobs.functions.claimJob(eth_job), host)
    send(w3, jobs.functions.claimJob(token_job), other)
    assert (job(market, eth_job)["host"], job(market, token_job)["host"]) == (host, other)
    # A host that switches its price token takes work in the new token only.
    send(w3, nodes.functions.setPriceToken(erc20), host)
    later_eth, _ = post(market, ETH)
    later_token, _ = post(market, erc20)
    with reverts(jobs, "TokenNotPriced", host, ETH, erc20):
        send(w3, jobs.functions.claimJob(later_eth), host)
    send(w3, jobs.functions.claimJob(later_token), host)
    assert job(market, eth_job)["token"] == ETH  # the job claimed before keeps its token


def test_unclaim_gives_the_job_back_and_the_escrow_stays(market: Market) -> None:
    w3, jobs, nodes, host, other = market.w3, market.jobs, market.nodes, market.host, market.other
    job_id = claimed(market)
    with reverts(jobs, "NotJobHost", job_id, other):
        send(w3, jobs.functions.unclaimJob(job_id), other)
    receipt = send(w3, jobs.functions.unclaimJob(job_id), host)
    assert events(jobs, "JobUnclaimed", receipt) == [{"jobId": job_id, "host": host}]
    assert events(nodes, "WorkClosed", receipt) == [{"host": host, "openWork": 0}]
    got = job(market, job_id)
    assert (got["status"], got["host"], got["pricePerMillion"], got["claimedAt"]) == (
        OPEN,
        ETH,
        0,
        0,
    )
    assert w3.eth.get_balance(jobs.address) == ESCROW
    assert nodes.functions.openWorkOf(host).call() == 0
    with reverts(jobs, "WrongJobStatus", job_id, OPEN):
        send(w3, jobs.functions.unclaimJob(job_id), host)
    register_host(market, host=other)  # another host may take it now
    send(w3, jobs.functions.claimJob(job_id), other)
    assert job(market, job_id)["host"] == other
    send(w3, nodes.functions.unregister(), host)  # the first host is free to leave


# ------------------------------------------------------------------------------ submit result


def test_submit_result_records_tokens_and_hashes(market: Market) -> None:
    w3, jobs, host = market.w3, market.jobs, market.host
    job_id = claimed(market)
    receipt = send(w3, jobs.functions.submitResult(job_id, MAX_TOKENS, OUTPUT, RECEIPTS), host)
    assert events(jobs, "ResultSubmitted", receipt) == [
        {
            "jobId": job_id,
            "host": host,
            "tokensUsed": MAX_TOKENS,
            "outputHash": OUTPUT,
            "receiptRoot": RECEIPTS,
        }
    ]
    stamp = w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    got = job(market, job_id)
    assert (got["status"], got["tokensUsed"], got["submittedAt"]) == (SUBMITTED, MAX_TOKENS, stamp)
    assert (got["outputHash"], got["receiptRoot"]) == (OUTPUT, RECEIPTS)
    assert jobs.functions.disputeEndsAt(job_id).call() == stamp + WINDOW


def test_submit_result_refusals(market: Market) -> None:
    w3, jobs, host, other = market.w3, market.jobs, market.host, market.other
    register_host(market)
    open_job, _ = post(market)
    with reverts(jobs, "WrongJobStatus", open_job, OPEN):
        send(w3, jobs.functions.submitResult(open_job, 1, OUTPUT, RECEIPTS), host)
    with reverts(jobs, "UnknownJob", 99):
        send(w3, jobs.functions.submitResult(99, 1, OUTPUT, RECEIPTS), host)
    send(w3, jobs.functions.claimJob(open_job), host)
    with reverts(jobs, "NotJobHost", open_job, other):
        send(w3, jobs.functions.submitResult(open_job, 1, OUTPUT, RECEIPTS), other)
    with reverts(jobs, "TooManyTokens", open_job, MAX_TOKENS + 1, MAX_TOKENS):
        send(w3, jobs.functions.submitResult(open_job, MAX_TOKENS + 1, OUTPUT, RECEIPTS), host)
    deadline = job(market, open_job)["deadline"]
    at_time(market, deadline)
    with reverts(jobs, "DeadlinePassed", open_job, deadline):
        send(w3, jobs.functions.submitResult(open_job, 1, OUTPUT, RECEIPTS), host)


# ---------------------------------------------------------------------------------- release


@pytest.mark.parametrize("kind", KINDS)
def test_release_after_the_window_pays_host_fee_and_refund_to_the_wei(
    market: Market, kind: str
) -> None:
    w3, jobs, nodes, token = market.w3, market.jobs, market.nodes, market.coin(kind)
    job_id = submitted(market, token)
    end = jobs.functions.disputeEndsAt(job_id).call()
    at_time(market, end - 1)
    with reverts(jobs, "DisputeWindowOpen", job_id, end):  # one second early: refused
        send(w3, jobs.functions.releasePayment(job_id), market.other)
    receipt = send_at(market, jobs.functions.releasePayment(job_id), market.other, end)
    assert events(jobs, "PaymentReleased", receipt) == [
        {
            "jobId": job_id,
            "host": market.host,
            "token": token,
            "charge": CHARGE,
            "fee": FEE,
            "hostAmount": HOST_GETS,
            "refund": REFUND,
        }
    ]
    assert events(market.earnings, "Credited", receipt) == [
        {"host": market.host, "token": token, "amount": HOST_GETS}
    ]
    assert job(market, job_id)["status"] == RELEASED
    assert earned(market, token) == HOST_GETS
    assert claimable(market, market.treasury, token) == FEE
    assert claimable(market, market.client, token) == REFUND
    assert balance(market, token, jobs.address) == FEE + REFUND
    assert balance(market, token, market.earnings.address) == HOST_GETS
    assert nodes.functions.openWorkOf(market.host).call() == 0
    with reverts(jobs, "WrongJobStatus", job_id, RELEASED):
        send(w3, jobs.functions.releasePayment(job_id), market.client)

    # Everyone pulls what is theirs: client and treasury here, the host via HostEarnings.
    for who, amount in [(market.client, REFUND), (market.treasury, FEE)]:
        before = balance(market, token, who)
        receipt = send(w3, jobs.functions.withdraw(token), who)
        assert events(jobs, "Withdrawn", receipt) == [
            {"account": who, "token": token, "amount": amount}
        ]
        gas = gas_cost(receipt) if token == ETH else 0
        assert balance(market, token, who) == before + amount - gas
        assert claimable(market, who, token) == 0
    payout_before = balance(market, token, market.payout)
    send(w3, market.earnings.functions.withdraw(token), market.host)
    assert balance(market, token, market.payout) == payout_before + HOST_GETS
    assert balance(market, token, jobs.address) == 0
    assert balance(market, token, market.earnings.address) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_client_may_release_at_once(market: Market, kind: str) -> None:
    jobs, token = market.jobs, market.coin(kind)
    job_id = submitted(market, token)
    with reverts(jobs, "DisputeWindowOpen", job_id, jobs.functions.disputeEndsAt(job_id).call()):
        send(market.w3, jobs.functions.releasePayment(job_id), market.host)
    receipt = send(market.w3, jobs.functions.releasePayment(job_id), market.client)
    assert events(jobs, "PaymentReleased", receipt)[0]["charge"] == CHARGE
    assert earned(market, token) == HOST_GETS
    assert claimable(market, market.client, token) == REFUND


@pytest.mark.parametrize("kind", KINDS)
def test_the_charge_is_capped_by_the_escrow(market: Market, kind: str) -> None:
    # 1,234 tokens would cost 2,894 but only 1,999 is in escrow: charge 1,999, fee
    # 1,999 * 250 / 10,000 = 49.975 → 49, host 1,950, refund 0.
    jobs, token = market.jobs, market.coin(kind)
    job_id = submitted(market, token, escrow=1_999)
    receipt = send(market.w3, jobs.functions.releasePayment(job_id), market.client)
    got = events(jobs, "PaymentReleased", receipt)[0]
    assert (got["charge"], got["fee"], got["hostAmount"], got["refund"]) == (1_999, 49, 1_950, 0)
    assert claimable(market, market.client, token) == 0
    assert claimable(market, market.treasury, token) == 49
    assert earned(market, token) == 1_950


def test_a_job_with_no_tokens_refunds_everything(market: Market) -> None:
    jobs = market.jobs
    job_id = submitted(market, tokens=0)
    receipt = send(market.w3, jobs.functions.releasePayment(job_id), market.client)
    got = events(jobs, "PaymentReleased", receipt)[0]
    assert (got["charge"], got["fee"], got["hostAmount"], got["refund"]) == (0, 0, 0, ESCROW)
    assert events(market.earnings, "Credited", receipt) == []  # nothing to credit
    assert claimable(market, market.client, ETH) == ESCROW
    assert claimable(market, market.treasury, ETH) == 0


# ------------------------------------------------------------------------------- challenges


def test_challenge_window_edges_and_refusals(market: Market) -> None:
    w3, jobs, client, host = market.w3, market.jobs, market.client, market.host
    job_id = submitted(market)
    end = jobs.functions.disputeEndsAt(job_id).call()
    with reverts(jobs, "NotJobClient", job_id, host):
        send(w3, jobs.functions.challengeJob(job_id), host, value=BOND)
    with reverts(jobs, "BondMismatch", BOND - 1, BOND):
        send(w3, jobs.functions.challengeJob(job_id), client, value=BOND - 1)
    with reverts(jobs, "NotArbiter", client):
        send(w3, jobs.functions.resolveChallenge(job_id, True), client)
    with reverts(jobs, "WrongJobStatus", job_id, SUBMITTED):
        send(w3, jobs.functions.resolveChallenge(job_id, True), market.owner)
    snap = market.chain.snapshot()
    at_time(market, end)
    with reverts(jobs, "DisputeWindowClosed", job_id, end):  # from the end on: too late
        send(w3, jobs.functions.challengeJob(job_id), client, value=BOND)
    market.chain.revert(snap)
    at_time(market, end - 2)
    receipt = send_at(market, jobs.functions.challengeJob(job_id), client, end - 1, value=BOND)
    assert events(jobs, "JobChallenged", receipt) == [
        {"jobId": job_id, "client": client, "bond": BOND}
    ]
    assert job(market, job_id)["status"] == CHALLENGED
    assert w3.eth.get_balance(jobs.address) == ESCROW + BOND
    with reverts(jobs, "WrongJobStatus", job_id, CHALLENGED):
        send(w3, jobs.functions.challengeJob(job_id), client, value=BOND)
    at_time(market, end + 10)
    with reverts(jobs, "WrongJobStatus", job_id, CHALLENGED):  # no release while disputed
        send(w3, jobs.functions.releasePayment(job_id), host)
    with reverts(jobs, "UnknownJob", 77):
        send(w3, jobs.functions.resolveChallenge(77, False), market.owner)


@pytest.mark.parametrize("kind", KINDS)
def test_an_upheld_challenge_refunds_all_returns_the_bond_and_slashes_the_host(
    market: Market, kind: str
) -> None:
    w3, jobs, nodes, client, host = market.w3, market.jobs, market.nodes, market.client, market.host
    token = market.coin(kind)
    job_id = submitted(market, token)
    send(w3, jobs.functions.challengeJob(job_id), client, value=BOND)
    with reverts(nodes, "OpenWork", host, 1):  # the stake cannot run from the verdict
        send(w3, nodes.functions.unregister(), host)
    registry_before = w3.eth.get_balance(nodes.address)
    receipt = send(w3, jobs.functions.resolveChallenge(job_id, True), market.owner)
    assert events(jobs, "ChallengeResolved", receipt) == [
        {"jobId": job_id, "upheld": True, "slashed": SLASHED}
    ]
    assert events(nodes, "Slashed", receipt) == [
        {"host": host, "amount": SLASHED, "remainingStake": MIN_STAKE - SLASHED, "to": jobs.address}
    ]
    assert events(jobs, "PaymentReleased", receipt) == []
    assert job(market, job_id)["status"] == REFUNDED
    assert nodes.functions.stakeOf(host).call() == MIN_STAKE - SLASHED
    assert w3.eth.get_balance(nodes.address) == registry_before - SLASHED
    assert nodes.functions.openWorkOf(host).call() == 0
    assert earned(market, token) == 0
    assert claimable(market, market.treasury, token) == 0
    # The client may take back the whole escrow, its bond and the slashed stake (all ETH but
    # the escrow on the token path).
    if token == ETH:
        assert claimable(market, client, ETH) == ESCROW + BOND + SLASHED
    else:
        assert claimable(market, client, token) == ESCROW
        assert claimable(market, client, ETH) == BOND + SLASHED
        before = balance(market, token, client)
        send(w3, jobs.functions.withdraw(token), client)
        assert balance(market, token, client) == before + ESCROW
    before = w3.eth.get_balance(client)
    receipt = send(w3, jobs.functions.withdraw(ETH), client)
    owed = BOND + SLASHED + (ESCROW if token == ETH else 0)
    assert w3.eth.get_balance(client) == before + owed - gas_cost(receipt)
    assert balance(market, token, jobs.address) == 0
    assert w3.eth.get_balance(jobs.address) == 0
    # Below the minimum stake the host takes no new work until it tops up.
    fresh, _ = post(market, token)
    with reverts(jobs, "StakeBelowMinimum", host, MIN_STAKE - SLASHED, MIN_STAKE):
        send(w3, jobs.functions.claimJob(fresh), host)
    send(w3, nodes.functions.addStake(), host, value=SLASHED)
    send(w3, jobs.functions.claimJob(fresh), host)


@pytest.mark.parametrize("kind", KINDS)
def test_a_rejected_challenge_pays_the_host_and_gives_it_the_bond(
    market: Market, kind: str
) -> None:
    w3, jobs, nodes, client, host = market.w3, market.jobs, market.nodes, market.client, market.host
    token = market.coin(kind)
    job_id = submitted(market, token)
    send(w3, jobs.functions.challengeJob(job_id), client, value=BOND)
    receipt = send(w3, jobs.functions.resolveChallenge(job_id, False), market.owner)
    assert events(jobs, "ChallengeResolved", receipt) == [
        {"jobId": job_id, "upheld": False, "slashed": 0}
    ]
    assert events(jobs, "PaymentReleased", receipt) == [
        {
            "jobId": job_id,
            "host": host,
            "token": token,
            "charge": CHARGE,
            "fee": FEE,
            "hostAmount": HOST_GETS,
            "refund": REFUND,
        }
    ]
    assert events(nodes, "Slashed", receipt) == []
    assert job(market, job_id)["status"] == RELEASED
    assert nodes.functions.stakeOf(host).call() == MIN_STAKE
    assert nodes.functions.openWorkOf(host).call() == 0
    if token == ETH:
        assert earned(market, ETH) == HOST_GETS + BOND
    else:
        assert earned(market, token) == HOST_GETS
        assert earned(market, ETH) == BOND
    assert claimable(market, client, token) == REFUND
    assert claimable(market, client, ETH) == (REFUND if token == ETH else 0)
    assert claimable(market, market.treasury, token) == FEE
    assert w3.eth.get_balance(market.earnings.address) == BOND + (HOST_GETS if token == ETH else 0)


def challenged(market: Market, token: str = ETH) -> tuple[int, int]:
    """A submitted job challenged by the client; returns its id and the challenge time."""
    job_id = submitted(market, token)
    stamp = now(market) + 5
    send_at(market, market.jobs.functions.challengeJob(job_id), market.client, stamp, value=BOND)
    return job_id, stamp


def test_the_arbitration_window_runs_from_the_challenge(market: Market) -> None:
    w3, jobs, chain, owner, other = market.w3, market.jobs, market.chain, market.owner, market.other
    with reverts(jobs, "UnknownJob", 3):
        send(w3, jobs.functions.settleUnresolved(3), other)
    job_id, stamp = challenged(market)
    end = stamp + ARBITRATION
    assert job(market, job_id)["challengedAt"] == stamp
    assert jobs.functions.arbitrationEndsAt(job_id).call() == end
    at_time(market, end - 2)
    snap = chain.snapshot()
    send_at(market, jobs.functions.resolveChallenge(job_id, False), owner, end - 1)  # in time
    chain.revert(snap)
    at_time(market, end - 1)
    with reverts(jobs, "ArbitrationWindowOpen", job_id, end):  # one second early: refused
        send(w3, jobs.functions.settleUnresolved(job_id), other)
    at_time(market, end)
    with reverts(jobs, "ArbitrationWindowClosed", job_id, end):  # the verdict comes too late
        send(w3, jobs.functions.resolveChallenge(job_id, True), owner)
    receipt = send(w3, jobs.functions.settleUnresolved(job_id), other)  # anyone, from the end
    assert events(jobs, "ChallengeExpired", receipt) == [
        {"jobId": job_id, "client": market.client, "bondReturned": BOND}
    ]
    with reverts(jobs, "WrongJobStatus", job_id, RELEASED):
        send(w3, jobs.functions.settleUnresolved(job_id), other)
    # A job that was never challenged is not settled this way, whatever the time.
    fresh, _ = post(market)
    send(w3, jobs.functions.claimJob(fresh), market.host)
    send(w3, jobs.functions.submitResult(fresh, 1, OUTPUT, RECEIPTS), market.host)
    at_time(market, now(market) + WINDOW + ARBITRATION)
    with reverts(jobs, "WrongJobStatus", fresh, SUBMITTED):
        send(w3, jobs.functions.settleUnresolved(fresh), other)
    assert jobs.functions.arbitrationEndsAt(fresh).call() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_an_unresolved_challenge_pays_the_host_and_gives_the_client_its_bond_back(
    market: Market, kind: str
) -> None:
    w3, jobs, nodes, client, host = market.w3, market.jobs, market.nodes, market.client, market.host
    token = market.coin(kind)
    job_id, stamp = challenged(market, token)
    with reverts(nodes, "OpenWork", host, 1):  # while the arbiter may still speak
        send(w3, nodes.functions.unregister(), host)
    receipt = send_at(
        market, jobs.functions.settleUnresolved(job_id), market.other, stamp + ARBITRATION
    )
    assert events(jobs, "ChallengeExpired", receipt) == [
        {"jobId": job_id, "client": client, "bondReturned": BOND}
    ]
    assert events(jobs, "PaymentReleased", receipt) == [
        {
            "jobId": job_id,
            "host": host,
            "token": token,
            "charge": CHARGE,
            "fee": FEE,
            "hostAmount": HOST_GETS,
            "refund": REFUND,
        }
    ]
    assert events(jobs, "ChallengeResolved", receipt) == []
    assert events(nodes, "Slashed", receipt) == []
    assert events(nodes, "WorkClosed", receipt) == [{"host": host, "openWork": 0}]
    assert job(market, job_id)["status"] == RELEASED
    # Paid as on release, but no bond for the host and no slash: the silence punishes nobody.
    assert nodes.functions.stakeOf(host).call() == MIN_STAKE
    assert earned(market, token) == HOST_GETS
    if token != ETH:
        assert earned(market, ETH) == 0
        assert claimable(market, client, token) == REFUND
    assert claimable(market, client, ETH) == BOND + (REFUND if token == ETH else 0)
    assert claimable(market, market.treasury, token) == FEE
    assert balance(market, token, jobs.address) == FEE + REFUND + (BOND if token == ETH else 0)
    assert w3.eth.get_balance(jobs.address) == BOND + (FEE + REFUND if token == ETH else 0)
    # Nothing is stuck: the client takes its bond back and the host may leave with its stake.
    before = w3.eth.get_balance(client)
    receipt = send(w3, jobs.functions.withdraw(ETH), client)
    owed = BOND + (REFUND if token == ETH else 0)
    assert w3.eth.get_balance(client) == before + owed - gas_cost(receipt)
    receipt = send(w3, nodes.functions.unregister(), host)
    assert events(nodes, "NodeUnregistered", receipt) == [
        {"host": host, "stakeReturned": MIN_STAKE}
    ]


# ------------------------------------------------------------------------ cancel and expire


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_refunds_an_open_job(market: Market, kind: str) -> None:
    w3, jobs, client, token = market.w3, market.jobs, market.client, market.coin(kind)
    register_host(market, price_token=token)
    job_id, _ = post(market, token)
    with reverts(jobs, "NotJobClient", job_id, market.host):
        send(w3, jobs.functions.cancelJob(job_id), market.host)
    receipt = send(w3, jobs.functions.cancelJob(job_id), client)
    assert events(jobs, "JobCancelled", receipt) == [{"jobId": job_id, "refund": ESCROW}]
    assert job(market, job_id)["status"] == CANCELLED
    assert claimable(market, client, token) == ESCROW
    with reverts(jobs, "WrongJobStatus", job_id, CANCELLED):
        send(w3, jobs.functions.cancelJob(job_id), client)
    with reverts(jobs, "WrongJobStatus", job_id, CANCELLED):
        send(w3, jobs.functions.claimJob(job_id), market.host)
    before = balance(market, token, client)
    receipt = send(w3, jobs.functions.withdraw(token), client)
    gas = gas_cost(receipt) if token == ETH else 0
    assert balance(market, token, client) == before + ESCROW - gas
    taken, _ = post(market, token)
    send(w3, jobs.functions.claimJob(taken), market.host)
    with reverts(jobs, "WrongJobStatus", taken, CLAIMED):
        send(w3, jobs.functions.cancelJob(taken), client)
    with reverts(jobs, "UnknownJob", 0):
        send(w3, jobs.functions.cancelJob(0), client)


@pytest.mark.parametrize("claim", [False, True], ids=["open", "claimed"])
def test_expire_refunds_an_undelivered_job_from_the_deadline_on(
    market: Market, claim: bool
) -> None:
    w3, jobs, nodes, host = market.w3, market.jobs, market.nodes, market.host
    job_id = claimed(market, market.token.address) if claim else post(market)[0]
    token = job(market, job_id)["token"]
    deadline = job(market, job_id)["deadline"]
    at_time(market, deadline - 1)
    with reverts(jobs, "DeadlineNotReached", job_id, deadline):
        send(w3, jobs.functions.expireJob(job_id), market.other)
    receipt = send_at(market, jobs.functions.expireJob(job_id), market.other, deadline)
    assert events(jobs, "JobExpired", receipt) == [{"jobId": job_id, "refund": ESCROW}]
    assert job(market, job_id)["status"] == EXPIRED
    assert claimable(market, market.client, token) == ESCROW
    assert events(nodes, "WorkClosed", receipt) == (
        [{"host": host, "openWork": 0}] if claim else []
    )
    with reverts(jobs, "WrongJobStatus", job_id, EXPIRED):
        send(w3, jobs.functions.expireJob(job_id), market.other)


def test_expire_refusals(market: Market) -> None:
    w3, jobs = market.w3, market.jobs
    with reverts(jobs, "UnknownJob", 5):
        send(w3, jobs.functions.expireJob(5), market.other)
    job_id = submitted(market)
    at_time(market, job(market, job_id)["deadline"] + 1)
    with reverts(jobs, "WrongJobStatus", job_id, SUBMITTED):  # delivered work is not expired
        send(w3, jobs.functions.expireJob(job_id), market.other)


# -------------------------------------------------------------------- withdraw and guards


def test_withdraw_refusals_keep_the_balance(market: Market) -> None:
    w3, jobs, client, chain = market.w3, market.jobs, market.client, market.chain
    with reverts(jobs, "NothingToWithdraw", client, ETH):
        send(w3, jobs.functions.withdraw(ETH), client)
    job_id, _ = post(market)
    send(w3, jobs.functions.cancelJob(job_id), client)
    chain.rpc("anvil_setCode", [client, REFUSES_ETH])
    chain.rpc("anvil_impersonateAccount", [client])
    try:
        with reverts(jobs, "EthTransferFailed", client, ESCROW):
            send(w3, jobs.functions.withdraw(ETH), client)
    finally:
        chain.rpc("anvil_stopImpersonatingAccount", [client])
    assert claimable(market, client, ETH) == ESCROW  # nothing lost


def test_plain_eth_is_refused(market: Market) -> None:
    with reverts(market.jobs, "UnexpectedEth", market.other):
        market.w3.eth.send_transaction(
            {"from": market.other, "to": market.jobs.address, "value": 1}
        )


def test_a_client_that_reenters_withdraw_meets_the_guard(market: Market) -> None:
    # A test double: the client's code calls withdraw(address(0)) again when it is paid.
    w3, jobs, client, chain = market.w3, market.jobs, market.client, market.chain
    first, _ = post(market)
    second, _ = post(market)
    send(w3, jobs.functions.cancelJob(first), client)
    send(w3, jobs.functions.cancelJob(second), client)
    chain.rpc("anvil_setCode", [client, reentering_code(jobs.address, "withdraw(address)")])
    chain.rpc("anvil_impersonateAccount", [client])
    try:
        before = w3.eth.get_balance(client)
        receipt = send(w3, jobs.functions.withdraw(ETH), client)
    finally:
        chain.rpc("anvil_stopImpersonatingAccount", [client])
    assert w3.eth.get_storage_at(client, 0) == keccak(text="Reentrancy()")[:4] + bytes(28)
    assert w3.eth.get_balance(client) == before + 2 * ESCROW - gas_cost(receipt)  # paid once
    assert w3.eth.get_balance(jobs.address) == 0
    assert claimable(market, client, ETH) == 0
