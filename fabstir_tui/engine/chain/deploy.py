"""Deploy our contract suite from the committed artifacts: used by `devnet` and by the tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from web3 import Web3
from web3.contract import Contract

from fabstir_tui.engine.chain.artifacts import load_artifact

# The devnet's approved demo model names; ids come from hashing the real GGUF (DESIGN §11.2).
MIN_STAKE_WEI = 10**17  # 0.1 ETH
FEE_BPS = 250  # 2.5 % of each charge to the treasury
DISPUTE_WINDOW_S = 3600
CHALLENGE_BOND_WEI = 10**16  # 0.01 ETH
SLASH_BPS = 1000  # 10 % of the host's stake when a challenge is upheld
ARBITRATION_WINDOW_S = 86400  # a day for the arbiter; then anyone may settle unresolved


class DeployError(RuntimeError):
    """A deployment transaction failed; the message names the contract and the step."""


@dataclass(frozen=True)
class DeployParams:
    """What the suite is deployed with; the devnet's defaults are the tests' defaults."""

    min_stake_wei: int = MIN_STAKE_WEI
    approved_models: tuple[tuple[bytes, str], ...] = ()
    fee_bps: int = FEE_BPS
    dispute_window_s: int = DISPUTE_WINDOW_S
    challenge_bond_wei: int = CHALLENGE_BOND_WEI
    slash_bps: int = SLASH_BPS
    arbitration_window_s: int = ARBITRATION_WINDOW_S
    # Empty: the deployer collects fees and arbitrates (the devnet's choice, DESIGN §11.4).
    treasury: str = ""
    arbiter: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    """Addresses of a deployed suite and the block it starts at (the follower's start)."""

    chain_id: int
    deployer: str
    arbiter: str
    start_block: int
    token: str
    model_registry: str
    node_registry: str
    host_earnings: str
    job_marketplace: str = ""
    treasury: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[str], None]


def deploy_contract(w3: Web3, name: str, sender: str, *args: Any) -> Contract:
    """Deploy one committed artifact from an unlocked account and wait for it to be mined."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx = factory.constructor(*args).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=60)
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise DeployError(f"deploying {name} failed in transaction {tx.hex()}")
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)


def transact(w3: Web3, call: Any, sender: str, what: str, value: int = 0) -> None:
    """Send one set-up call and demand success, naming the step when it fails."""
    tx = call.transact({"from": sender, "value": value})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=60)
    if receipt["status"] != 1:
        raise DeployError(f"{what} failed in transaction {tx.hex()}")


def deploy_suite(
    w3: Web3,
    deployer: str,
    params: DeployParams | None = None,
    progress: Progress | None = None,
) -> Deployment:
    """Deploy token, registries, earnings and the marketplace, and wire them together."""
    params = params or DeployParams()
    say = progress or (lambda _msg: None)
    start = int(w3.eth.block_number) + 1
    say("deploying FabstirTestToken")
    token = deploy_contract(w3, "FabstirTestToken", deployer)
    say("deploying ModelRegistry")
    models = deploy_contract(w3, "ModelRegistry", deployer)
    say("deploying NodeRegistry")
    nodes = deploy_contract(w3, "NodeRegistry", deployer, models.address, params.min_stake_wei)
    say("deploying HostEarnings")
    earnings = deploy_contract(w3, "HostEarnings", deployer, nodes.address)
    treasury = params.treasury or deployer
    arbiter = params.arbiter or deployer
    say("deploying JobMarketplace")
    market = deploy_contract(
        w3,
        "JobMarketplace",
        deployer,
        nodes.address,
        earnings.address,
        treasury,
        arbiter,
        params.fee_bps,
        params.dispute_window_s,
        params.challenge_bond_wei,
        params.slash_bps,
        params.arbitration_window_s,
    )
    say("wiring the marketplace into HostEarnings and NodeRegistry")
    call = earnings.functions.setMarketplace(market.address)
    transact(w3, call, deployer, "HostEarnings.setMarketplace")
    transact(
        w3, nodes.functions.setMarketplace(market.address), deployer, "NodeRegistry.setMarketplace"
    )
    for model_id, name in params.approved_models:
        say(f"approving model {name} ({model_id.hex()[:12]}…)")
        transact(w3, models.functions.approveModel(model_id, name), deployer, f"approve {name}")
    return Deployment(
        chain_id=int(w3.eth.chain_id),
        deployer=deployer,
        arbiter=arbiter,
        start_block=start,
        token=token.address,
        model_registry=models.address,
        node_registry=nodes.address,
        host_earnings=earnings.address,
        job_marketplace=market.address,
        treasury=treasury,
    )
