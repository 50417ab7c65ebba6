"""ChainService: the node's chain side — follower, ledger, wallet, sender and status — in one."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from fabstir_tui.config import Config
from fabstir_tui.engine.chain.actions import (
    ETH,
    ChainAction,
    ChainUnavailableError,
    PreparedTx,
    ReadOnlyError,
    describe,
)
from fabstir_tui.engine.chain.contracts import CONTRACTS, ChainContracts
from fabstir_tui.engine.chain.events import (
    ChainConnection,
    ChainHead,
    ChainLogApplied,
    ChainStatus,
    WalletState,
)
from fabstir_tui.engine.chain.follower import EventFollower
from fabstir_tui.engine.chain.ledger import Ledger, follower_name
from fabstir_tui.engine.chain.passphrase import find_passphrase
from fabstir_tui.engine.chain.rpc_pool import RpcPool, url_host
from fabstir_tui.engine.chain.sender import TxSender
from fabstir_tui.engine.chain.txerrors import TxBroadcastUncertain
from fabstir_tui.engine.chain.txtypes import TxOutcome
from fabstir_tui.engine.chain.wallet import WalletError, keystore_path, read_address, unlock_async
from fabstir_tui.engine.events import EventBus, LogLevel
from fabstir_tui.engine.store import Store

LogFn = Callable[[LogLevel, str, str], None]
_REFRESH_S = 5.0
_RESTART_MAX_S = 60.0
# Local devnets and Base Sepolia; anything else needs chain.allow_mainnet (DESIGN §11.13).
SAFE_CHAIN_IDS = frozenset({31337, 1337, 84532})


class ChainService:
    """Follows our contracts, keeps the ledger, holds the unlocked key and sends for the node."""

    def __init__(self, config: Config, store: Store, bus: EventBus, log: LogFn) -> None:
        self.config = config
        self.chain = config.chain
        self.store = store
        self.bus = bus
        self._log = log
        self.keystore = keystore_path(config)
        self.address = ""
        self.pool: RpcPool | None = None
        self.follower: EventFollower | None = None
        self.ledger: Ledger | None = None
        self.sender: TxSender | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._kick = asyncio.Event()
        self.contracts = ChainContracts(config.chain)
        self._wallet: WalletState = "none"
        self._wallet_detail = ""
        self._connection = ""
        self.status = ChainStatus(
            enabled=self.chain.enabled,
            chain_id=self.chain.chain_id,
            read_only=self.read_only,
            payment_token=self.chain.payment_token,
            keystore=str(self.keystore),
        )
        self._unlock_lock = asyncio.Lock()
        self._stopping = False

    @property
    def read_only(self) -> bool:
        return self.config.node.read_only

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start following; a missing keystore or passphrase leaves the wallet locked, not fatal."""
        if not self.chain.enabled:
            self._publish()
            return
        self.pool = RpcPool(self.chain.rpc_urls, on_switch=self._on_switch)
        if self.keystore.is_file():
            try:
                self.address = read_address(self.keystore)
                self._wallet = "locked"
            except WalletError as exc:
                self._wallet, self._wallet_detail = "error", str(exc)
        else:
            self._wallet_detail = f"no keystore at {self.keystore}: run `fabstir-tui keys new`"
        spec = self.contracts.spec()
        name = follower_name(self.chain.chain_id, spec, self.address)
        self.ledger = Ledger(self.store, self.address or ETH, follower=name)
        if self.ledger.start_over_unless(name):
            self._log(
                "info",
                "chain",
                "the followed contracts or the node key changed: rebuilding the ledger from "
                f"block {self.chain.start_block}",
            )
        if spec:
            self.follower = EventFollower(
                self.pool,
                self.chain.ws_url,
                self.store,
                spec,
                self.chain,
                self.ledger.apply,
                self.ledger.on_reorg,
                self.bus,
                cursor_name=name,
            )
            self._tasks.append(asyncio.create_task(self._follow(), name="chain-follower"))
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="chain-status"))
        self._publish()
        if self.address and not self.read_only:
            self._tasks.append(asyncio.create_task(self._auto_unlock(), name="wallet-unlock"))

    async def stop(self) -> None:
        """Stop following and close connections; an applied log is never half-written."""
        self._stopping = True
        if self.follower is not None:
            await self.follower.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.pool is not None:
            await self.pool.close()

    async def _follow(self) -> None:
        """Run the follower; if it stops on an error, say so and start it again with back-off
        (it resumes from its cursor, so nothing is missed or applied twice)."""
        assert self.follower is not None
        delay = 1.0
        while True:
            try:
                await self.follower.run()
                return
            except Exception as exc:
                self._log(
                    "error",
                    "chain",
                    self._redact(f"the event follower stopped: {exc}; restarting in {delay:.0f} s"),
                )
                why = self._redact(f"follower stopped: {exc}")
                self.status = dataclasses.replace(self.status, error=why)
                self.bus.publish(self.status)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX_S)

    def _redact(self, text: str) -> str:
        """Provider URLs often carry an API key in the path: keep scheme, host and port."""
        for url in (*self.chain.rpc_urls, self.chain.ws_url):
            if url:
                text = text.replace(url, url_host(url))
        return text

    def _on_switch(self, url: str, old: str, why: str) -> None:
        self._log(
            "warning", "chain", f"RPC failover from {url_host(old)} to {url_host(url)}: {why}"
        )

    # --- wallet ---------------------------------------------------------------------------

    @property
    def wallet_state(self) -> WalletState:
        return self._wallet

    async def _auto_unlock(self) -> None:
        """Unlock from the passphrase file or keyring when one is set; otherwise wait for it.
        The keyring may block on D-Bus, so it is asked from a thread."""

        warnings: list[str] = []  # said on the loop: the bus is not thread-safe
        try:
            found = await asyncio.to_thread(find_passphrase, self.address, warn=warnings.append)
        except WalletError as exc:
            self._wallet_detail = str(exc)
            self._log("error", "wallet", str(exc))
            return
        finally:
            for message in warnings:
                self._log("warning", "wallet", message)
        if found is None:
            if self.sender is not None:  # unlocked meanwhile (the demo, the prompt)
                return
            self._wallet_detail = "locked: enter the passphrase (Earnings screen, key k)"
            self._log("warning", "wallet", f"key {self.address} is locked; {self._wallet_detail}")
            return
        self._log("info", "wallet", f"unlocking key {self.address} with the {found.describe()}")
        with contextlib.suppress(Exception):  # unlock() logged it; the prompt still works
            await self.unlock(found.value)

    async def unlock(self, passphrase: str) -> None:
        """Decrypt the keystore (scrypt, seconds) with visible progress, then start the sender.
        Serialised: two unlocks at once would make two senders with two nonce counters."""
        async with self._unlock_lock:
            await self._unlock(passphrase)

    async def _unlock(self, passphrase: str) -> None:
        if self.pool is None or not self.address:
            raise ChainUnavailableError(self._wallet_detail or "the chain side is not configured")
        if self.sender is not None:
            return
        self._wallet = "unlocking"

        def progress(elapsed: float, done: bool) -> None:
            self._wallet_detail = "" if done else f"decrypting the keystore… {elapsed:.1f} s"
            self._publish()

        try:
            account = await unlock_async(self.keystore, passphrase, progress=progress)
        except WalletError as exc:
            self._wallet, self._wallet_detail = "locked", str(exc)
            self._log("error", "wallet", str(exc))
            self._publish()
            raise
        try:
            await self._start_sender(account)
        except Exception as exc:
            self._wallet = "error"
            self._wallet_detail = (
                f"the key is decrypted, but the chain cannot be reached to start sending: {exc}; "
                "retrying in the background"
            )
            self._log("error", "wallet", self._wallet_detail)
            self._publish()
            self._tasks.append(asyncio.create_task(self._retry_sender(account)))

    async def _start_sender(self, account: LocalAccount) -> None:
        assert self.pool is not None
        names = {str(getattr(self.chain, key)): name for name, key in CONTRACTS.items()}
        sender = TxSender(
            self.pool.web3(),
            account,
            self.store,
            self.chain,
            self.bus,
            contracts={a: n for a, n in names.items() if a},
        )
        await sender.start()
        self.sender = sender
        self._tasks.append(asyncio.create_task(self._recheck_pending(), name="tx-recheck"))
        self._wallet, self._wallet_detail = "unlocked", ""
        self._log("info", "wallet", f"key {self.address} unlocked; transactions can be signed")
        self._kick.set()

    async def _retry_sender(self, account: LocalAccount) -> None:
        """Keep trying to start the sender (RPC down at boot) with back-off."""
        delay = 2.0
        while self.sender is None:
            await asyncio.sleep(delay)
            try:
                await self._start_sender(account)
            except Exception as exc:
                self._wallet_detail = f"cannot start sending yet: {exc}; retrying"
                delay = min(delay * 2, _RESTART_MAX_S)

    async def _recheck_pending(self) -> None:
        """Confirm or rebroadcast journaled transactions nobody is waiting on any more."""
        while True:
            await asyncio.sleep(max(self.chain.poll_interval_s * 10, 5.0))
            sender = self.sender
            if sender is None:
                continue
            for entry in sender.journal.pending(sender.address, sender.chain_id):
                try:
                    await sender.wait(entry.hash, timeout=0.1)
                except Exception as exc:  # still pending or the RPC is down: next round
                    self._log("debug", "chain", f"{entry.label} {entry.hash} pending: {exc}")

    # --- status ---------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        sub = self.bus.subscribe(ChainHead, ChainLogApplied, ChainConnection, maxsize=100)

        async def pump() -> None:
            async for event in sub:
                if isinstance(event, ChainConnection):
                    self._connection = event.state
                self._kick.set()

        pumper = asyncio.create_task(pump())
        try:
            while not self._stopping:
                await self.refresh()
                self._kick.clear()
                # Not wait_for: on 3.11 it can swallow a cancel that lands as the wait ends
                # (seen here: stop() hung on this task); asyncio.timeout does not.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_REFRESH_S):
                        await self._kick.wait()
                await asyncio.sleep(0.2)  # coalesce a burst of logs into one refresh
        finally:
            sub.close()
            pumper.cancel()

    async def refresh(self) -> ChainStatus:
        """Read block, gas, balances and registration; an RPC failure is shown, not raised."""
        if self.pool is None:
            return self.status
        try:
            status = await self._read_status(self.pool.web3())
        except Exception as exc:
            status = dataclasses.replace(
                self.status, error=self._redact(f"cannot read the chain: {exc}"), ts=time.time()
            )
        self.status = status
        self.bus.publish(status)
        return status

    async def _read_status(self, w3: AsyncWeb3[Any]) -> ChainStatus:
        block = int(await w3.eth.block_number)
        latest = await w3.eth.get_block("latest")
        base_fee = int(latest.get("baseFeePerGas", 0))
        fields: dict[str, Any] = {}
        if self.address:
            eth = int(await w3.eth.get_balance(self.address))  # type: ignore[arg-type]
            fields["eth_balance_wei"] = eth
            fields["low_gas"] = eth < int(self.chain.low_gas_eth * 10**18)
        if self.chain.node_registry:
            fields.update(await self.contracts.registration(w3, self.address))
        fee_bps = 0
        if self.chain.job_marketplace:
            fee_bps = await self.contracts.immutable(w3, "JobMarketplace", "feeBps")
        summary = self.ledger.summary(fee_bps) if self.ledger is not None else {}
        fields["balances"] = await self.contracts.balances(w3, self.address, summary)
        follower = self.follower
        return ChainStatus(
            enabled=True,
            chain_id=self.chain.chain_id,
            url=url_host(self.pool.current_url) if self.pool else "",
            block=block,
            applied_block=follower.cursor.number if follower else None,
            synced=follower.synced if follower else False,
            connection=self._connection,
            address=self.address,
            wallet=self._wallet,
            wallet_detail=self._wallet_detail,
            base_fee_wei=base_fee,
            priority_fee_wei=int(self.chain.priority_fee_gwei * 10**9),
            fee_bps=fee_bps,
            read_only=self.read_only,
            payment_token=self.chain.payment_token,
            keystore=str(self.keystore),
            **fields,
        )

    def _publish(self) -> None:
        self.status = dataclasses.replace(
            self.status,
            address=self.address,
            wallet=self._wallet,
            wallet_detail=self._wallet_detail,
            ts=time.time(),
        )
        self.bus.publish(self.status)

    # --- operator actions -----------------------------------------------------------------

    def signing_account(self) -> LocalAccount | None:
        """The unlocked node key (to sign receipts), or None while locked or read-only."""
        if self.read_only or self.sender is None:
            return None
        return self.sender.account

    def refusal(self) -> str | None:
        """Why nothing can be signed now, or None when the node may sign."""
        try:
            self._ready_sender()
        except (ReadOnlyError, ChainUnavailableError) as exc:
            return str(exc)
        return None

    def _ready_sender(self) -> TxSender:
        if self.read_only:
            raise ReadOnlyError(
                "the node runs read-only (node.read_only = true): nothing is signed; "
                "turn it off in the config to act on-chain"
            )
        if not self.chain.enabled:
            raise ChainUnavailableError("no chain configured: set chain.rpc_urls")
        if self.chain.chain_id not in SAFE_CHAIN_IDS and not self.chain.allow_mainnet:
            raise ReadOnlyError(
                f"chain {self.chain.chain_id} is not a devnet or Base Sepolia: these contracts "
                "are unaudited, so signing there needs chain.allow_mainnet = true"
            )
        if self.sender is None:
            why = self._wallet_detail or "the wallet is locked"
            raise ChainUnavailableError(f"cannot sign: {why}")
        return self.sender

    async def prepare(self, action: ChainAction) -> PreparedTx:
        """Build and preview the transaction an action needs; nothing is signed yet."""
        sender = self._ready_sender()
        call, value = self.contracts.call_for(action, sender.w3)
        preview = await sender.preview(call, value)
        notes = await self.contracts.notes(action, sender.w3, self.address)
        return PreparedTx(action, describe(action), call, value, preview, notes)

    async def execute(self, prepared: PreparedTx) -> TxOutcome:
        """Sign and send what the operator confirmed, then wait for it to be mined."""
        sender = self._ready_sender()
        try:
            sent = await sender.send(
                prepared.call, prepared.value_wei, prepared.label, prepared.preview
            )
            tx_hash = sent.tx_hash
        except TxBroadcastUncertain as exc:  # journaled; waiting rebroadcasts it if need be
            tx_hash = exc.tx_hash
        outcome = await sender.wait(tx_hash)
        self._kick.set()
        return outcome
