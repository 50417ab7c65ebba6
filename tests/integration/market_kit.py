"""The whole suite with JobMarketplace, deployed by the product's deploy_suite on a real anvil,
and the small steps the marketplace tests repeat (fund, post, claim, submit, move time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chain_kit import ETH, MIN_STAKE, MODEL_A, MODEL_B, send
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.chain.artifacts import load_artifact
from fabstir_tui.engine.chain.deploy import Deployment, DeployParams, deploy_suite

FEE_BPS = 250
WINDOW = 3600
BOND = 10**16  # 0.01 ETH
SLASH_BPS = 1000
ARBITRATION = 7200  # seconds the arbiter has after a challenge
PRICE = 2_345_678  # the host's price per million tokens for model A
ESCROW = 10_000
MAX_TOKENS = 5_000
TTL = 600  # seconds from now to a job's deadline

# JobMarketplace.JobStatus / SessionStatus
OPEN, CLAIMED, SUBMITTED, CHALLENGED, RELEASED, REFUNDED, CANCELLED, EXPIRED = range(1, 9)
ACTIVE, COMPLETED, TIMED_OUT = range(1, 4)

OUTPUT = Web3.keccak(text="output")
RECEIPTS = Web3.keccak(text="receipt root")
PROMPT = Web3.keccak(text="prompt")


@dataclass
class Market:
    """Deployed contracts and the anvil accounts that play each role (owner = arbiter)."""

    w3: Web3
    chain: Anvil
    deployment: Deployment
    token: Contract
    models: Contract
    nodes: Contract
    earnings: Contract
    jobs: Contract
    owner: str
    host: str
    payout: str
    client: str
    other: str
    treasury: str

    def coin(self, kind: str) -> str:
        """The payment token address for a parametrized money path: "eth" or "erc20"."""
        return ETH if kind == "eth" else self.token.address


def _at(w3: Web3, name: str, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact(name).abi)


def deploy_market(chain: Anvil) -> Market:
    """Deploy with the product's deploy_suite; accounts: owner (deployer, arbiter), host,
    payout, client, other, treasury."""
    w3 = Web3(Web3.HTTPProvider(chain.http_url))
    owner, host, payout, client, other, treasury = [str(a) for a in w3.eth.accounts[:6]]
    params = DeployParams(
        min_stake_wei=MIN_STAKE,
        approved_models=((MODEL_A, "SmolLM2-135M"), (MODEL_B, "Qwen3-0.6B")),
        fee_bps=FEE_BPS,
        dispute_window_s=WINDOW,
        challenge_bond_wei=BOND,
        slash_bps=SLASH_BPS,
        arbitration_window_s=ARBITRATION,
        treasury=treasury,
    )
    d = deploy_suite(w3, owner, params)
    return Market(
        w3=w3,
        chain=chain,
        deployment=d,
        token=_at(w3, "FabstirTestToken", d.token),
        models=_at(w3, "ModelRegistry", d.model_registry),
        nodes=_at(w3, "NodeRegistry", d.node_registry),
        earnings=_at(w3, "HostEarnings", d.host_earnings),
        jobs=_at(w3, "JobMarketplace", d.job_marketplace),
        owner=owner,
        host=host,
        payout=payout,
        client=client,
        other=other,
        treasury=treasury,
    )


def register_host(
    m: Market,
    host: str | None = None,
    price: int = PRICE,
    stake: int = MIN_STAKE,
    price_token: str = ETH,
) -> None:
    """Register a host (m.host by default) serving model A at `price` per million tokens of
    `price_token` (ETH by default), paid to m.payout."""
    call = m.nodes.functions.register([MODEL_A], [price], price_token, m.payout, "{}")
    send(m.w3, call, host or m.host, value=stake)


def fund(m: Market, token: str, who: str, amount: int) -> None:
    """Give `who` test tokens and let the marketplace pull them (nothing to do for ETH)."""
    if token != ETH:
        send(m.w3, m.token.functions.mint(who, amount), m.owner)
        send(m.w3, m.token.functions.approve(m.jobs.address, amount), who)


def balance(m: Market, token: str, who: str) -> int:
    if token == ETH:
        return int(m.w3.eth.get_balance(Web3.to_checksum_address(who)))
    return int(m.token.functions.balanceOf(who).call())


def now(m: Market) -> int:
    """The latest block's timestamp."""
    return int(m.w3.eth.get_block("latest")["timestamp"])


def at_time(m: Market, timestamp: int) -> None:
    """Mine a block at exactly `timestamp`. anvil runs calls and gas estimates on the latest
    block's time, so a refusal checked next (by `reverts`) is checked at exactly this time."""
    m.chain.rpc("evm_mine", [timestamp])


def send_at(m: Market, call: Any, sender: str, timestamp: int, value: int = 0) -> TxReceipt:
    """Mine `call` in a block stamped exactly `timestamp`. The gas is given, so no estimate
    runs on the earlier latest block; the transaction must succeed."""
    m.chain.rpc("evm_setNextBlockTimestamp", [timestamp])
    tx = call.transact({"from": sender, "value": value, "gas": 2_000_000})
    receipt = m.w3.eth.wait_for_transaction_receipt(tx)
    assert receipt["status"] == 1
    assert m.w3.eth.get_block(receipt["blockNumber"])["timestamp"] == timestamp
    return receipt


def post(
    m: Market,
    token: str = ETH,
    escrow: int = ESCROW,
    model: bytes = MODEL_A,
    max_tokens: int = MAX_TOKENS,
    max_price: int = PRICE,
    ttl: int = TTL,
) -> tuple[int, TxReceipt]:
    """The client posts a job (funding an ERC20 escrow first); returns its id and receipt."""
    fund(m, token, m.client, escrow)
    deadline = now(m) + ttl
    call = m.jobs.functions.postJob(model, PROMPT, max_tokens, max_price, deadline, token, escrow)
    receipt = send(m.w3, call, m.client, value=escrow if token == ETH else 0)
    return int(m.jobs.functions.jobCount().call()), receipt


def claimed(m: Market, token: str = ETH, escrow: int = ESCROW, **kw: Any) -> int:
    """A job posted and claimed by m.host (registered here, priced in `token`)."""
    register_host(m, price_token=token)
    job_id, _ = post(m, token, escrow, **kw)
    send(m.w3, m.jobs.functions.claimJob(job_id), m.host)
    return job_id


def submitted(m: Market, token: str = ETH, escrow: int = ESCROW, tokens: int = 1_234) -> int:
    """A job posted, claimed and answered with `tokens` tokens used."""
    job_id = claimed(m, token, escrow)
    send(m.w3, m.jobs.functions.submitResult(job_id, tokens, OUTPUT, RECEIPTS), m.host)
    return job_id


def _fields(contract: Contract, fn: str, value: Any) -> dict[str, Any]:
    item = next(i for i in contract.abi if i.get("name") == fn and i["type"] == "function")
    names = [c["name"] for c in item["outputs"][0]["components"]]
    return dict(zip(names, value, strict=True))


def job(m: Market, job_id: int) -> dict[str, Any]:
    """getJob as a dict keyed by the struct's field names."""
    return _fields(m.jobs, "getJob", m.jobs.functions.getJob(job_id).call())


def session(m: Market, session_id: int) -> dict[str, Any]:
    """getSession as a dict keyed by the struct's field names."""
    return _fields(m.jobs, "getSession", m.jobs.functions.getSession(session_id).call())


def claimable(m: Market, who: str, token: str) -> int:
    return int(m.jobs.functions.claimable(who, token).call())


def earned(m: Market, token: str) -> int:
    """What HostEarnings holds for m.host in `token`."""
    return int(m.earnings.functions.balanceOf(m.host, token).call())
