"""A real devnet for UI and engine tests: anvil, our deployed suite, a node key in a keystore."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract

from fabstir_tui.config import Config
from fabstir_tui.engine.chain import Anvil, load_artifact
from fabstir_tui.engine.chain.anvil import anvil_account
from fabstir_tui.engine.chain.deploy import Deployment, DeployParams, deploy_suite
from fabstir_tui.engine.chain.wallet import create_keystore

PASSPHRASE = "correct horse battery staple"
TEST_SCRYPT_N = 2**10  # a cheap keystore for tests; the product uses eth-account's default
ETH = "0x0000000000000000000000000000000000000000"


def anvil_key(index: int) -> bytes:
    """The private key of anvil's account `index` (public test data from its mnemonic)."""
    return bytes(anvil_account(index).key)


@dataclass
class Devnet:
    """The chain, the deployed addresses and the roles the tests play."""

    anvil: Anvil
    w3: Web3
    deployment: Deployment
    model_id: bytes
    host: str
    client: str
    payout: str

    def contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=load_artifact(name).abi
        )

    @property
    def token(self) -> Contract:
        return self.contract("FabstirTestToken", self.deployment.token)

    @property
    def market(self) -> Contract:
        return self.contract("JobMarketplace", self.deployment.job_marketplace)

    @property
    def nodes(self) -> Contract:
        return self.contract("NodeRegistry", self.deployment.node_registry)

    @property
    def earnings(self) -> Contract:
        return self.contract("HostEarnings", self.deployment.host_earnings)

    def send(self, call: Any, sender: str, value: int = 0) -> Any:
        """Send from an unlocked anvil account and demand success."""
        receipt = self.w3.eth.wait_for_transaction_receipt(
            call.transact({"from": sender, "value": value})
        )
        assert receipt["status"] == 1
        return receipt

    def post_job(self, escrow: int, max_tokens: int, max_price: int) -> int:
        """The client posts an ERC20 job for our model; returns its id."""
        self.send(self.token.functions.mint(self.client, escrow), self.deployment.deployer)
        self.send(self.token.functions.approve(self.market.address, escrow), self.client)
        deadline = int(time.time()) + 3600
        call = self.market.functions.postJob(
            self.model_id, b"\x01" * 32, max_tokens, max_price, deadline, self.token.address, escrow
        )
        self.send(call, self.client)
        return int(self.market.functions.jobCount().call())


def start_devnet(model_file: Path) -> Devnet:
    """Anvil with automine, the suite deployed, and the model file's SHA-256 approved."""
    anvil = Anvil(chain_id=31337, accounts=5).start()
    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    model_id = hashlib.sha256(model_file.read_bytes()).digest()
    accounts = [str(a) for a in w3.eth.accounts]
    params = DeployParams(approved_models=((model_id, "tiny-llama"),))
    deployment = deploy_suite(w3, accounts[0], params)
    return Devnet(anvil, w3, deployment, model_id, accounts[1], accounts[2], accounts[3])


def node_keystore(data_dir: Path, index: int = 1) -> Path:
    """anvil's account `index` as the node key, in a (cheap) keystore."""
    path = data_dir / "keystore.json"
    create_keystore(path, PASSPHRASE, private_key=anvil_key(index), scrypt_n=TEST_SCRYPT_N)
    return path


def chain_config(
    base: Config, devnet: Devnet, keystore: Path, *, read_only: bool = False
) -> Config:
    """`base` pointed at the devnet: polling HTTP quickly, our contracts, our key."""
    d = devnet.deployment
    dumped = base.model_dump(mode="json")
    dumped["node"]["read_only"] = read_only
    dumped["chain"] = {
        "chain_id": d.chain_id,
        "rpc_urls": [devnet.anvil.http_url],
        "node_registry": d.node_registry,
        "model_registry": d.model_registry,
        "job_marketplace": d.job_marketplace,
        "host_earnings": d.host_earnings,
        "payment_token": d.token,
        "start_block": d.start_block,
        "poll_interval_s": 0.1,
        "keystore": str(keystore),
    }
    return Config.model_validate(dumped)
