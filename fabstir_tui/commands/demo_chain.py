"""The demo's embedded devnet: a fresh anvil chain per run and a public, pre-unlocked node key.

`fabstir-tui demo` starts the same devnet as `fabstir-tui devnet` (anvil, the contract suite,
the demo model approved, FUSD for every test account), layers its [chain] values over the
config as the demo's own source, and unlocks the node key once the node runs. Without anvil
the demo still runs, without a chain, after a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fabstir_tui.commands.demo_clients import DemoMarket, DemoRunner, demo_summary, wait_follower
from fabstir_tui.commands.devnet_setup import (
    SETUP_ERRORS,
    Devnet,
    DevnetAccount,
    SetupInterrupted,
    StopSignals,
    devnet_accounts,
    start_devnet,
)
from fabstir_tui.commands.output import say
from fabstir_tui.engine.chain.anvil import find_anvil
from fabstir_tui.engine.chain.deploy import Progress
from fabstir_tui.engine.chain.wallet import KEYSTORE_NAME, WalletError, create_keystore

if TYPE_CHECKING:
    from fabstir_tui.engine.node import Node

DEMO_CHAIN_ID = 31337
# The marketplace's dispute window on the demo devnet: short, so that a payment the node
# releases after the window shows within a demo run (a real chain uses an hour or more).
DEMO_DISPUTE_WINDOW_S = 20
# Interval mining like `fabstir-tui devnet` (deploys still run a block per transaction): the
# demo's chain should feel like a real one, and nothing in `demo --once` waits for a block.
DEMO_BLOCK_TIME_S = 1.0
DEMO_ACCOUNT_INDEX = 1  # #0 deploys the suite and owns the token; #1 is the demo's node
# Fixed and documented, not a secret: the key it encrypts is anvil's PUBLIC test account #1
# (default mnemonic), so a per-run or hidden passphrase would protect nothing. For the same
# reason the keystore uses a cheap scrypt: unlocking takes milliseconds, not seconds.
DEMO_PASSPHRASE = "fabstir-demo-public-test-key"
DEMO_SCRYPT_N = 1 << 12
KEY_SUBDIR = "demo-key"  # used when <demo dir>/keystore.json is someone else's keystore
# The node's store for one devnet run. Each run starts a new chain, so follower cursors,
# ledger rows and the transaction journal of the last run would be wrong: the folder's
# database is deleted at every start. It is a folder of its own so that a --data-dir that
# points at a real node's folder never loses that node's database.
NODE_SUBDIR = "devnet-node"
_DB_FILES = ("node.db", "node.db-wal", "node.db-shm", "node.db-journal")


def demo_account() -> DevnetAccount:
    """anvil's test account #1, derived from its public default mnemonic."""
    return devnet_accounts(DEMO_ACCOUNT_INDEX + 1)[DEMO_ACCOUNT_INDEX]


def _demo_owned(path: Path) -> str | None:
    """The address in `path` if the demo wrote it (cheap scrypt, demo passphrase), else None.

    The scrypt cost is checked first, so a real keystore is never put through seconds of
    scrypt with a passphrase that cannot be its own.
    """
    from eth_account import Account

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        crypto = document.get("crypto") or document.get("Crypto")
        if int(crypto["kdfparams"]["n"]) != DEMO_SCRYPT_N:
            return None
        key = Account.decrypt(document, DEMO_PASSPHRASE)
    except Exception:  # unreadable, not a keystore, or another passphrase: not the demo's
        return None
    return str(Account.from_key(key).address)


def _create(path: Path, account: DevnetAccount) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = bytes.fromhex(account.private_key.removeprefix("0x"))
    create_keystore(path, DEMO_PASSPHRASE, private_key=key, scrypt_n=DEMO_SCRYPT_N)


def ensure_demo_keystore(demo_dir: Path, account: DevnetAccount, note: Progress) -> Path:
    """The demo key's keystore: written once and kept; only the demo's own file is replaced."""
    for path in (demo_dir / KEYSTORE_NAME, demo_dir / KEY_SUBDIR / KEYSTORE_NAME):
        if not (path.exists() or path.is_symlink()):
            _create(path, account)
            note(f"wrote the demo key's keystore {path}")
            return path
        owner = _demo_owned(path)
        if owner is None:
            note(f"{path} holds a keystore the demo did not write; it is left untouched")
            continue
        if owner.lower() != account.address.lower():
            path.unlink()
            _create(path, account)
            note(f"replaced the demo's own keystore {path} (it held {owner})")
        return path
    raise WalletError(
        f"no place for the demo key: {demo_dir / KEYSTORE_NAME} and "
        f"{demo_dir / KEY_SUBDIR / KEYSTORE_NAME} hold other keystores; move one away"
    )


def fresh_node_dir(demo_dir: Path) -> Path:
    """The node's data folder for this run, with the last run's database deleted."""
    node_dir = demo_dir / NODE_SUBDIR
    node_dir.mkdir(parents=True, exist_ok=True)
    for name in _DB_FILES:
        with contextlib.suppress(FileNotFoundError):
            (node_dir / name).unlink()
    return node_dir


class _Note:
    """Say a set-up step on stderr, keep it for the node's log, stop between steps on a signal."""

    def __init__(self, signals: StopSignals, keep: bool) -> None:
        self.signals = signals
        self.keep = keep
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        self.signals.checkpoint()
        say(f"devnet: {message}")
        if self.keep:
            self.lines.append(message)


@dataclass
class DemoChain:
    """The demo's running devnet and what the node needs from it."""

    devnet: Devnet
    keystore: Path
    address: str
    node_dir: Path
    pending: list[str] = field(default_factory=list)  # set-up lines for the node's log
    register: bool = False  # register the node for the demo model once it runs
    clients: bool = False  # and run the simulated clients (needs `register`)
    summary: bool = False  # print the headless summary line on stdout at stop
    runner: DemoRunner | None = None

    def config_extra(self) -> dict[str, object]:
        """Dotted config keys for the demo's layer: the devnet's [chain], key and store."""
        chain = {f"chain.{key}": value for key, value in self.devnet.info.chain_settings().items()}
        return {**chain, "chain.keystore": self.keystore, "paths.data_dir": self.node_dir}

    async def after_start(self, node: Node) -> None:
        """Replay the set-up lines into the node's log, then unlock the demo key."""
        for line in self.pending:
            node.log("info", "devnet", line)
        self.pending.clear()
        node.log(
            "info",
            "demo",
            f"unlocking the demo node key {self.address} ({self.keystore}): anvil's PUBLIC test "
            f"account #{DEMO_ACCOUNT_INDEX}, encrypted with the fixed demo passphrase "
            f"{DEMO_PASSPHRASE!r}; never send real funds to it",
        )
        try:
            await node.unlock_wallet(DEMO_PASSPHRASE)
        except Exception as exc:  # the demo goes on with a locked key; the audit says why
            node.log("warning", "demo", f"the demo key stays locked: {exc}")
            return
        node.log("info", "demo", f"demo node key {self.address} unlocked")
        if self.register:
            try:
                market = self.market()
            except RuntimeError as exc:
                node.log("warning", "demo", f"the demo node is not registered: {exc}")
                return
            self.runner = DemoRunner(node, market, clients=self.clients)
            self.runner.start()

    def market(self) -> DemoMarket:
        """The devnet's contracts and the demo model, for registration and the clients."""
        from fabstir_tui.engine.inference.demo_model import demo_model_path

        info = self.devnet.info
        model = demo_model_path()
        if model is None:
            raise RuntimeError("the demo model is missing (run `make bootstrap`)")
        d = info.deployment
        return DemoMarket(
            info.rpc_url, info.chain_id, d.job_marketplace, d.node_registry, d.token, model
        )

    async def before_stop(self, node: Node) -> None:
        """Stop the simulated clients (cancelled and awaited), then, headless, print the
        summary once the node's follower has caught up with the chain."""
        if self.runner is not None:
            await self.runner.stop()
        if not self.summary:
            return
        head: int | None = None
        with contextlib.suppress(Exception):  # no head: the summary says what the node has
            head = int(await asyncio.to_thread(self.devnet.anvil.rpc, "eth_blockNumber"), 16)
        if head is not None:
            await wait_follower(node, head)
        line, block = demo_summary(node, self.devnet.info.deployment.token)
        node.log("info", "demo", f"summary as of block {block}: {line}")
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def stop(self) -> None:
        """Stop anvil (its process group); the node must be stopped already."""
        pid = self.devnet.info.anvil_pid
        self.devnet.stop()
        say(f"devnet: anvil (pid {pid}) stopped")


@dataclass
class ChainlessDemo:
    """The demo without a devnet (no anvil, or set-up failed): the old demo, plus the reason."""

    reason: str
    log_later: bool

    def config_extra(self) -> dict[str, object]:
        """Nothing to layer: the node runs without a chain."""
        return {}

    async def after_start(self, node: Node) -> None:
        """Repeat the warning in the node's log, where the TUI shows it (stderr is hidden)."""
        if self.log_later:
            node.log("warning", "demo", f"the demo runs without a chain: {self.reason}")

    async def before_stop(self, node: Node) -> None:
        """No clients ran."""

    def stop(self) -> None:
        """Nothing runs."""


def start_demo_chain(demo_dir: Path, *, log_later: bool) -> DemoChain | ChainlessDemo:
    """Bring up the demo's devnet and key, or warn and fall back to the demo without a chain.

    Each step is said on stderr; with `log_later` (the TUI) it is also kept for the node's
    log. A stop signal during set-up stops anvil and raises SetupInterrupted.
    """
    signals = StopSignals()
    note = _Note(signals, log_later)
    signals.install()
    devnet: Devnet | None = None
    try:
        find_anvil()  # before writing anything: without anvil the demo is the old one
        account = demo_account()
        keystore = ensure_demo_keystore(demo_dir, account, note)
        devnet = start_devnet(
            block_time_s=DEMO_BLOCK_TIME_S,
            chain_id=DEMO_CHAIN_ID,
            progress=note,
            dispute_window_s=DEMO_DISPUTE_WINDOW_S,
        )
        node_dir = fresh_node_dir(demo_dir)
        info = devnet.info
        note(
            f"ready in {info.ready_s:.1f} s: chain id {info.chain_id} at {info.rpc_url} "
            f"(anvil pid {info.anvil_pid}); the demo node is test account "
            f"#{DEMO_ACCOUNT_INDEX} {account.address}, its store {node_dir} (new each run)"
        )
        signals.restore()
        signals.checkpoint()  # a signal that came after the last step
    except SetupInterrupted:
        if devnet is not None:
            devnet.stop()
        raise
    except (*SETUP_ERRORS, WalletError) as exc:
        if devnet is not None:
            devnet.stop()
        say(f"warning: the demo runs without a chain: {exc}")
        return ChainlessDemo(str(exc), log_later)
    finally:
        signals.restore()
    return DemoChain(devnet, keystore, account.address, node_dir, note.lines)
