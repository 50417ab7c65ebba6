"""client/market.py on a real anvil with our contracts: a client posts (ERC20 and ETH escrow),
sees the claim, finds the host's P2P address in the registry (and a clear refusal when the
host published none), and accepts a submitted result early."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3

from fabstir_tui.client.market import (
    ETH,
    MarketError,
    client_web3,
    close_web3,
    escrow_for,
    host_p2p_addr,
    job_on_chain,
    post_job,
    release_early,
    wait_claimed,
)
from fabstir_tui.engine.chain import Anvil, load_artifact
from fabstir_tui.engine.chain.anvil import anvil_account
from fabstir_tui.engine.chain.deploy import Deployment, DeployParams, deploy_suite

MODEL = "0x" + hashlib.sha256(b"a model the market approves").hexdigest()
UNAPPROVED = "0x" + hashlib.sha256(b"a model nobody approved").hexdigest()
PRICE = 1_000_000  # per million tokens, base units of the token
PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
ADDR = "/ip4/127.0.0.1/tcp/4001"


@dataclass
class Market:
    anvil: Anvil
    w3: Web3
    d: Deployment
    client: LocalAccount
    hosts: list[str]  # registered: [0] with P2P metadata, [1] without a peer id

    def contract(self, name: str, address: str) -> Any:
        return self.w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=load_artifact(name).abi
        )

    def send(self, call: Any, sender: str, value: int = 0) -> None:
        tx = call.transact({"from": sender, "value": value})
        assert self.w3.eth.wait_for_transaction_receipt(tx)["status"] == 1

    def token_balance(self, who: str) -> int:
        return int(self.contract("FabstirTestToken", self.d.token).functions.balanceOf(who).call())


@pytest.fixture(scope="module")
def market() -> Iterator[Market]:
    with Anvil(chain_id=31337, accounts=5) as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.http_url))
        accounts = [str(a) for a in w3.eth.accounts]
        params = DeployParams(approved_models=((bytes.fromhex(MODEL[2:]), "approved"),))
        d = deploy_suite(w3, accounts[0], params)
        client = anvil_account(2)
        m = Market(anvil, w3, d, client, [accounts[1], accounts[3]])
        token = m.contract("FabstirTestToken", d.token)
        m.send(token.functions.mint(client.address, 10**12), accounts[0])
        nodes = m.contract("NodeRegistry", d.node_registry)
        stake = int(nodes.functions.minStake().call())
        with_p2p = json.dumps({"peer_id": PEER, "multiaddrs": [ADDR]})
        without = json.dumps({"peer_id": "", "multiaddrs": [], "api_url": ""})
        for host, metadata in zip(m.hosts, (with_p2p, without), strict=True):
            call = nodes.functions.register(
                [bytes.fromhex(MODEL[2:])], [PRICE], d.token, host, metadata
            )
            m.send(call, host, value=stake)
        yield m


async def _post(m: Market, prompt: str, **overrides: Any) -> int:
    w3 = client_web3(m.anvil.http_url)
    try:
        args: dict[str, Any] = {
            "model_id": MODEL,
            "prompt": prompt,
            "max_tokens": 32,
            "max_price_per_million": PRICE * 2,
            "ttl_s": 600,
            "token": m.d.token,
            "escrow": escrow_for(32, PRICE * 2),
        }
        args.update(overrides)
        return await post_job(w3, m.client, m.d.job_marketplace, **args)
    finally:
        await close_web3(w3)


@pytest.mark.slow
async def test_posting_with_erc20_escrow_approves_and_pulls_it(market: Market) -> None:
    before = market.token_balance(market.client.address)
    escrow = escrow_for(32, PRICE * 2)
    job_id = await _post(market, "hello market")
    w3 = client_web3(market.anvil.http_url)
    try:
        job = await job_on_chain(w3, market.d.job_marketplace, job_id)
    finally:
        await close_web3(w3)
    assert job["status"] == "open" and job["client"] == market.client.address
    assert job["promptHash"] == keccak(b"hello market")
    assert job["modelId"] == bytes.fromhex(MODEL[2:]) and job["escrow"] == escrow
    assert market.token_balance(market.client.address) == before - escrow
    assert market.token_balance(market.d.job_marketplace) >= escrow


@pytest.mark.slow
async def test_posting_with_eth_escrow_sends_it_as_value(market: Market) -> None:
    escrow = 10**15
    job_id = await _post(market, "paid in ether", token=ETH, escrow=escrow)
    job = market.contract("JobMarketplace", market.d.job_marketplace).functions.getJob(job_id)
    record = job.call()
    assert record[3] == ETH and record[10] == escrow  # token, escrow (struct order)


@pytest.mark.slow
async def test_a_refused_post_says_what_why_and_what_to_do(market: Market) -> None:
    with pytest.raises(MarketError) as refused:
        await _post(market, "no such model", model_id=UNAPPROVED)
    err = refused.value
    assert err.what == "posting a job" and "ModelNotApproved" in err.why and err.fix


@pytest.mark.slow
async def test_claim_is_seen_and_the_hosts_address_comes_from_its_metadata(
    market: Market,
) -> None:
    host = market.hosts[0]
    job_id = await _post(market, "who takes it?")
    w3 = client_web3(market.anvil.http_url)
    try:
        with pytest.raises(MarketError, match="a host's claim"):
            await wait_claimed(w3, market.d.job_marketplace, job_id, timeout_s=1.5)
        marketplace = market.contract("JobMarketplace", market.d.job_marketplace)
        market.send(marketplace.functions.claimJob(job_id), host)
        assert await wait_claimed(w3, market.d.job_marketplace, job_id, 30) == host
        addr = await host_p2p_addr(w3, market.d.node_registry, host)
        assert addr == f"{ADDR}/p2p/{PEER}"  # the peer id is appended to a bare address

        with pytest.raises(MarketError) as none:
            await host_p2p_addr(w3, market.d.node_registry, market.hosts[1])
        assert "publishes no peer id" in none.value.why and "P2P" in none.value.fix
        stranger = str(market.w3.eth.accounts[4])
        with pytest.raises(MarketError, match="not registered"):
            await host_p2p_addr(w3, market.d.node_registry, stranger)
    finally:
        await close_web3(w3)


@pytest.mark.slow
async def test_the_client_releases_a_submitted_result_early(market: Market) -> None:
    host = market.hosts[0]
    job_id = await _post(market, "accept me early")
    marketplace = market.contract("JobMarketplace", market.d.job_marketplace)
    market.send(marketplace.functions.claimJob(job_id), host)
    used = 20
    market.send(marketplace.functions.submitResult(job_id, used, b"\x01" * 32, b"\x02" * 32), host)
    earnings = market.contract("HostEarnings", market.d.host_earnings)
    before = int(earnings.functions.balanceOf(host, market.d.token).call())
    w3 = client_web3(market.anvil.http_url)
    try:
        receipt = await release_early(w3, market.client, market.d.job_marketplace, job_id)
        job = await job_on_chain(w3, market.d.job_marketplace, job_id)
        with pytest.raises(MarketError, match="the job is released"):
            await release_early(w3, market.client, market.d.job_marketplace, job_id, timeout_s=5)
    finally:
        await close_web3(w3)
    assert receipt["status"] == 1 and job["status"] == "released"
    fee_bps = int(marketplace.functions.feeBps().call())
    charge = used * PRICE // 1_000_000
    paid = charge - charge * fee_bps // 10_000
    assert int(earnings.functions.balanceOf(host, market.d.token).call()) == before + paid
