"""Deploy our compiled contracts with web3.py on a real anvil and check their reverts by ABI."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.types import TxReceipt

from fabstir_tui.engine.chain.artifacts import load_artifact


def deploy(w3: Web3, name: str, sender: str, *args: Any) -> Contract:
    """Deploy the committed artifact of `name` from an unlocked anvil account."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx = factory.constructor(*args).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx)
    assert receipt["status"] == 1
    address = receipt["contractAddress"]
    assert address is not None
    return w3.eth.contract(address=address, abi=artifact.abi)


def send(w3: Web3, call: Any, sender: str, value: int = 0) -> TxReceipt:
    """Send a contract call as a transaction and demand that it was mined successfully."""
    tx = call.transact({"from": sender, "value": value})
    receipt = w3.eth.wait_for_transaction_receipt(tx)
    assert receipt["status"] == 1
    return receipt


def gas_cost(receipt: TxReceipt) -> int:
    """What a transaction cost its sender in wei (no L1 fee on anvil)."""
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])


def events(contract: Contract, name: str, receipt: TxReceipt) -> list[dict[str, Any]]:
    """The decoded args of every `name` event this contract emitted in the receipt."""
    decoded = getattr(contract.events, name)().process_receipt(receipt, errors=DISCARD)
    return [dict(e["args"]) for e in decoded if e["address"] == contract.address]


def decode_error(contract: Contract, data: str) -> tuple[str, tuple[Any, ...]]:
    """Name and arguments of a custom error, looked up by selector in the contract's ABI."""
    raw = bytes.fromhex(data.removeprefix("0x"))
    for item in contract.abi:
        if item["type"] != "error":
            continue
        types = [arg["type"] for arg in item["inputs"]]
        if keccak(text=f"{item['name']}({','.join(types)})")[:4] == raw[:4]:
            return str(item["name"]), tuple(decode(types, raw[4:]))
    raise AssertionError(f"selector 0x{raw[:4].hex()} is not an error of this contract")


def _norm(value: Any) -> Any:
    """Addresses compare case-insensitively (eth_abi decodes lower case, web3 checksums)."""
    return value.lower() if isinstance(value, str) else value


@contextlib.contextmanager
def reverts(contract: Contract, name: str, *args: Any) -> Iterator[None]:
    """Expect a revert with exactly this custom error (by ABI selector) and these arguments."""
    try:
        yield
    except ContractCustomError as exc:
        data = exc.data if isinstance(exc.data, str) else str(exc.data)
        got_name, got_args = decode_error(contract, data)
        got = (got_name, tuple(_norm(a) for a in got_args))
        want = (name, tuple(_norm(a) for a in args))
        assert got == want, f"expected {want}, got {got}"
    else:
        raise AssertionError(f"expected revert {name}{args}, but the call succeeded")


ETH = "0x0000000000000000000000000000000000000000"
MIN_STAKE = 10**17  # 0.1 ETH
MODEL_A = hashlib.sha256(b"model a gguf bytes").digest()
MODEL_B = hashlib.sha256(b"model b gguf bytes").digest()
MODEL_C = hashlib.sha256(b"model c gguf bytes").digest()  # never approved
# A runtime that reverts on any call (PUSH0 PUSH0 REVERT): an address that refuses ETH.
REFUSES_ETH = "0x5f5ffd"


@dataclass
class Suite:
    """The deployed contracts and the named anvil accounts that play each role."""

    w3: Web3
    token: Contract
    models: Contract
    nodes: Contract
    earnings: Contract
    owner: str
    host: str
    payout: str
    market: str
    other: str


def deploy_suite(w3: Web3) -> Suite:
    """Deploy the four contracts, approve models A and B, and name the marketplace account."""
    owner, host, payout, market, other = [str(a) for a in w3.eth.accounts[:5]]
    token = deploy(w3, "FabstirTestToken", owner)
    models = deploy(w3, "ModelRegistry", owner)
    nodes = deploy(w3, "NodeRegistry", owner, models.address, MIN_STAKE)
    earnings = deploy(w3, "HostEarnings", owner, nodes.address)
    send(w3, models.functions.approveModel(MODEL_A, "SmolLM2-135M"), owner)
    send(w3, models.functions.approveModel(MODEL_B, "Qwen3-0.6B"), owner)
    send(w3, earnings.functions.setMarketplace(market), owner)
    return Suite(w3, token, models, nodes, earnings, owner, host, payout, market, other)


def register(suite: Suite, stake: int = MIN_STAKE, price_token: str = ETH) -> TxReceipt:
    """Register suite.host serving model A at 2,000 per million tokens of `price_token` (ETH
    by default), paid to suite.payout."""
    call = suite.nodes.functions.register([MODEL_A], [2_000], price_token, suite.payout, "{}")
    return send(suite.w3, call, suite.host, value=stake)


def reentering_code(target: str, signature: str) -> str:
    """Runtime code (a test double) that, when paid, calls target.signature(0) once and stores
    the first 32 bytes it got back in slot 0, so a test can read what a reentry met."""
    selector = keccak(text=signature)[:4].hex()
    address = target.lower().removeprefix("0x")
    return (
        f"0x63{selector}60e01b5f52"  # mstore(0, selector << 224): calldata = selector + 32 zeros
        f"60205f60245f5f73{address}5af150"  # call(gas, target, 0, 0, 0x24, 0, 0x20); pop
        "5f515f5500"  # sstore(0, mload(0)); stop
    )
