"""A node that takes marketplace jobs, on its own anvil: the suite deployed with the tiny
model approved, the node key (anvil account 1) registered at a known price, a client
(account 2) that posts jobs and signs its requests, and the chain's clock to move."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from fabstir_tui.config import (
    ApiSection,
    ChainSection,
    Config,
    InferenceSection,
    JobsSection,
    P2pSection,
    PathsSection,
    TelemetrySection,
)
from fabstir_tui.engine.chain import Anvil, load_artifact
from fabstir_tui.engine.chain.anvil import anvil_account
from fabstir_tui.engine.chain.deploy import Deployment, DeployParams, deploy_suite
from fabstir_tui.engine.chain.wallet import create_keystore
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobKind
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.messages import JobRequest
from fabstir_tui.engine.p2p.request_auth import AuthDomain, sign_request

ETH = "0x0000000000000000000000000000000000000000"
PASSPHRASE = "pipeline test passphrase"
PRICE = 1_234_567  # our price per million tokens, wei
FEE_BPS = 250
WINDOW = 600  # dispute window, seconds of chain time
LOCAL = "/ip4/127.0.0.1/tcp/0"
OTHER_MODEL = b"\x42" * 32  # approved on-chain, not on our disk


@dataclass
class Rig:
    """The chain, our contracts and the roles; `node` once started."""

    anvil: Anvil
    w3: Web3
    deployment: Deployment
    model_sha: str  # 64 hex
    host: str
    client: str
    client_key: bytes
    models_dir: Path
    data_dir: Path

    def contract(self, name: str, address: str) -> Contract:
        abi = load_artifact(name).abi
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)

    @property
    def market(self) -> Contract:
        return self.contract("JobMarketplace", self.deployment.job_marketplace)

    @property
    def earnings(self) -> Contract:
        return self.contract("HostEarnings", self.deployment.host_earnings)

    def send(self, call: Any, sender: str, value: int = 0) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(
            call.transact({"from": sender, "value": value})
        )
        assert receipt["status"] == 1
        return receipt

    def chain_now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def post(
        self,
        prompt: str,
        *,
        max_tokens: int = 64,
        escrow: int = 10**15,
        max_price: int = PRICE * 2,
        ttl: int = 600,
        model: bytes | None = None,
    ) -> int:
        """The client posts an ETH job for our model (or `model`); its id."""
        model_id = model if model is not None else bytes.fromhex(self.model_sha)
        call = self.market.functions.postJob(
            model_id,
            keccak(prompt.encode("utf-8")),
            max_tokens,
            max_price,
            self.chain_now() + ttl,
            ETH,
            escrow,
        )
        self.send(call, self.client, value=escrow)
        return int(self.market.functions.jobCount().call())

    def job(self, job_id: int) -> dict[str, Any]:
        fn = self.market.functions.getJob(job_id)
        names = [o["name"] for o in fn.abi["outputs"][0]["components"]]
        return dict(zip(names, fn.call(), strict=True))

    def advance(self, seconds: int) -> None:
        """Move the chain's clock and mine a block stamped there."""
        self.anvil.rpc("evm_increaseTime", [seconds])
        self.anvil.rpc("evm_mine", [])

    def config(self, **jobs: Any) -> Config:
        d = self.deployment
        return Config(
            paths=PathsSection(
                data_dir=self.data_dir,
                cache_dir=self.data_dir.parent / "cache",
                models_dirs=[self.models_dir],
            ),
            inference=InferenceSection(threads=1),
            telemetry=TelemetrySection(gpu_backend="none"),
            chain=ChainSection(
                chain_id=d.chain_id,
                rpc_urls=[self.anvil.http_url],
                node_registry=d.node_registry,
                model_registry=d.model_registry,
                job_marketplace=d.job_marketplace,
                host_earnings=d.host_earnings,
                start_block=d.start_block,
                poll_interval_s=0.1,
                keystore=self.data_dir / "keystore.json",
            ),
            p2p=P2pSection(enabled=True, listen_addrs=[LOCAL], dht=False),
            jobs=JobsSection(**jobs),
        )

    def key(self, job_id: int) -> JobKey:
        d = self.deployment
        return JobKey(JobKind.OPEN, d.chain_id, d.job_marketplace, str(job_id))

    def request(self, job_id: int, prompt: str, *, signer: bytes | None = None) -> JobRequest:
        """The client's signed request for its job (greedy, so the text is reproducible)."""
        d = self.deployment
        domain = AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace)
        signed = sign_request(
            signer or self.client_key,
            domain,
            host=self.host,
            prompt=prompt,
            nonce=time.time_ns(),
            expiry=int(time.time()) + 300,
            job_id=job_id,
        )
        return JobRequest(
            model_id=self.model_sha,
            prompt=prompt,
            max_tokens=16,
            job_id=str(job_id),
            temperature=0.0,
            auth=signed.to_wire(),
        )


def make_rig(anvil: Anvil, tiny_gguf: Path, root: Path) -> Rig:
    """Deploy, approve the model, register account 1 at PRICE (ETH), write its keystore."""
    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    raw = tiny_gguf.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    models = root / "models"
    models.mkdir()
    (models / "tiny.gguf").write_bytes(raw)
    data = root / "data"
    data.mkdir()
    accounts = [str(a) for a in w3.eth.accounts]
    params = DeployParams(
        approved_models=((bytes.fromhex(sha), "tiny"), (OTHER_MODEL, "not on this node")),
        fee_bps=FEE_BPS,
        dispute_window_s=WINDOW,
    )
    deployment = deploy_suite(w3, accounts[0], params)
    host_key = bytes(anvil_account(1).key)
    create_keystore(data / "keystore.json", PASSPHRASE, private_key=host_key, scrypt_n=2**10)
    rig = Rig(
        anvil,
        w3,
        deployment,
        sha,
        accounts[1],
        accounts[2],
        bytes(anvil_account(2).key),
        models,
        data,
    )
    nodes = rig.contract("NodeRegistry", deployment.node_registry)
    stake = int(nodes.functions.minStake().call())
    call = nodes.functions.register([bytes.fromhex(sha)], [PRICE], ETH, accounts[3], "{}")
    rig.send(call, rig.host, value=stake)
    return rig


async def start_node(rig: Rig, *, http_only: bool = False, **jobs: Any) -> Node:
    """Our node: started, model hashed and loaded, key unlocked; `http_only`: the API on a
    free port and P2P off, so HTTP is the only door."""
    config = rig.config(**jobs)
    if http_only:
        update = {
            "api": ApiSection(enabled=True, listen="127.0.0.1:0"),
            "p2p": P2pSection(enabled=False),
        }
        config = config.model_copy(update=update)
    node = Node(config)
    await node.start()
    try:
        async with asyncio.timeout(60):
            while any(m.sha256 is None for m in node.list_models()):
                await asyncio.sleep(0.05)
        [model] = node.list_models()
        await node.load_model(model.path)
        await node.unlock_wallet(PASSPHRASE)
    except BaseException:
        await node.stop()
        raise
    return node


async def until(what: Callable[[], Any], timeout: float = 30.0, doing: str = "") -> Any:
    """Poll until `what()` is truthy (a safety net, not a speed claim); its value."""
    async with asyncio.timeout(timeout):
        while True:
            value = what()
            if value:
                return value
            await asyncio.sleep(0.05)


def p2p_addr(node: Node) -> str:
    status = node.p2p_status()
    assert status is not None
    return next(a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/"))


def open_session(rig: Rig, deposit: int, interval: int, timeout: int) -> int:
    """The rig's client opens a session with our host for the rig's model; its id."""
    call = rig.market.functions.createSession(
        rig.host, bytes.fromhex(rig.model_sha), ETH, deposit, PRICE * 2, interval, timeout
    )
    rig.send(call, rig.client, value=deposit)
    return int(rig.market.functions.sessionCount().call())


def session(rig: Rig, sid: int) -> dict[str, object]:
    """The session as the marketplace stores it, by field name."""
    fn = rig.market.functions.getSession(sid)
    names = [o["name"] for o in fn.abi["outputs"][0]["components"]]
    return dict(zip(names, fn.call(), strict=True))


async def api_paid_node(rig: Rig, **jobs: Any) -> Node:
    """The rig's node serving paid requests over HTTP only."""
    return await start_node(rig, http_only=True, **jobs)
