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
    PreparedTx,
    ReadOnlyError,
    Register,
    SetPrice,
    Unregister,
    UpdateMetadata,
    UpdateModels,
    Withdraw,
    describe,
    model_id_bytes,
)
from fabstir_tui.engine.chain.artifacts import load_artifact
from fabstir_tui.engine.chain.events import (
    ChainConnection,
    ChainHead,
    ChainLogApplied,
    ChainStatus,
    TokenBalance,
    WalletState,
)
from fabstir_tui.engine.chain.follower import EventFollower
from fabstir_tui.engine.chain.ledger import Ledger
from fabstir_tui.engine.chain.passphrase import find_passphrase
from fabstir_tui.engine.chain.rpc_pool import RpcPool, url_host
from fabstir_tui.engine.chain.sender import TxSender
from fabstir_tui.engine.chain.txtypes import TxOutcome
from fabstir_tui.engine.chain.wallet import WalletError, keystore_path, read_address, unlock_async
from fabstir_tui.engine.events import EventBus, LogLevel
from fabstir_tui.engine.store import Store

LogFn = Callable[[LogLevel, str, str], None]
_CONTRACTS = {
    "NodeRegistry": "node_registry",
    "ModelRegistry": "model_registry",
    "HostEarnings": "host_earnings",
    "JobMarketplace": "job_marketplace",
}
_REFRESH_S = 5.0


class ChainUnavailableError(RuntimeError):
    """An action needs something the chain side does not have yet (RPC, contract, key)."""


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
        self._tokens: dict[str, tuple[str, int]] = {ETH: ("ETH", 18)}
        self._wallet: WalletState = "none"
        self._wallet_detail = ""
        self._connection = ""
        self.status = ChainStatus(
            enabled=self.chain.enabled, chain_id=self.chain.chain_id, read_only=self.read_only
        )

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
        self.ledger = Ledger(self.store, self.address or ETH)
        spec = self._contract_spec()
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
            )
            self._tasks.append(asyncio.create_task(self._follow(), name="chain-follower"))
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="chain-status"))
        self._publish()
        if self.address and not self.read_only:
            self._tasks.append(asyncio.create_task(self._auto_unlock(), name="wallet-unlock"))

    async def stop(self) -> None:
        """Stop following and close connections; an applied log is never half-written."""
        if self.follower is not None:
            await self.follower.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.pool is not None:
            await self.pool.close()

    def _contract_spec(self) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        spec: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        for name, key in _CONTRACTS.items():
            address = str(getattr(self.chain, key))
            if address:
                spec[name] = (address, load_artifact(name).abi)
        return spec

    async def _follow(self) -> None:
        assert self.follower is not None
        try:
            await self.follower.run()
        except Exception as exc:  # a handler bug: say so loudly, keep the node up
            self._log("error", "chain", f"the event follower stopped: {exc}")
            self.status = dataclasses.replace(self.status, error=f"follower stopped: {exc}")
            self.bus.publish(self.status)

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
            self._wallet_detail = "locked: enter the passphrase (Earnings screen, key k)"
            self._log("warning", "wallet", f"key {self.address} is locked; {self._wallet_detail}")
            return
        self._log("info", "wallet", f"unlocking key {self.address} with the {found.describe()}")
        with contextlib.suppress(Exception):  # unlock() logged it; the prompt still works
            await self.unlock(found.value)

    async def unlock(self, passphrase: str) -> None:
        """Decrypt the keystore (scrypt, seconds) with visible progress, then start the sender."""
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
            self._wallet = "locked"
            self._wallet_detail = f"the key decrypted, but the sender could not start: {exc}"
            self._log("error", "wallet", self._wallet_detail)
            self._publish()
            raise

    async def _start_sender(self, account: LocalAccount) -> None:
        assert self.pool is not None
        names = {str(getattr(self.chain, key)): name for name, key in _CONTRACTS.items()}
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
        self._wallet, self._wallet_detail = "unlocked", ""
        self._log("info", "wallet", f"key {self.address} unlocked; transactions can be signed")
        self._kick.set()

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
            while True:
                await self.refresh()
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), _REFRESH_S)
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
                self.status, error=f"cannot read the chain: {exc}", ts=time.time()
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
            fields.update(await self._registration(w3))
        fee_bps = 0
        if self.chain.job_marketplace:
            market = self._contract(w3, "JobMarketplace")
            fee_bps = int(await market.functions.feeBps().call())
        fields["balances"] = await self._balances(w3, fee_bps)
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
            **fields,
        )

    async def _registration(self, w3: AsyncWeb3[Any]) -> dict[str, Any]:
        nodes = self._contract(w3, "NodeRegistry")
        min_stake = int(await nodes.functions.minStake().call())
        if not self.address:
            return {"min_stake_wei": min_stake}
        stake, payout, metadata, models, active = await nodes.functions.getNode(self.address).call()
        prices = []
        for model in models:
            price = int(await nodes.functions.priceOf(self.address, model).call())
            prices.append(("0x" + bytes(model).hex(), price))
        return {
            "registered": bool(active),
            "stake_wei": int(stake),
            "min_stake_wei": min_stake,
            "payout": str(payout) if active else "",
            "metadata": str(metadata),
            "models": tuple(prices),
        }

    async def _balances(self, w3: AsyncWeb3[Any], fee_bps: int) -> tuple[TokenBalance, ...]:
        summary = self.ledger.summary(fee_bps) if self.ledger is not None else {}
        tokens = [ETH]
        if self.chain.payment_token:
            tokens.append(AsyncWeb3.to_checksum_address(self.chain.payment_token))
        tokens += [t for t in summary if t.lower() not in {x.lower() for x in tokens}]
        earnings = self._contract(w3, "HostEarnings") if self.chain.host_earnings else None
        out = []
        for token in tokens:
            symbol, decimals = await self._token_info(w3, token)
            withdrawable = 0
            if earnings is not None and self.address:
                withdrawable = int(await earnings.functions.balanceOf(self.address, token).call())
            figures = next((v for k, v in summary.items() if k.lower() == token.lower()), None)
            out.append(
                TokenBalance(
                    token=token,
                    symbol=symbol,
                    decimals=decimals,
                    withdrawable=withdrawable,
                    **(
                        {
                            "held_in_escrow": figures.held_in_escrow,
                            "jobs_awaiting_release": figures.jobs_awaiting_release,
                            "earned_today": figures.earned_today,
                            "earned_7d": figures.earned_7d,
                            "earned_total": figures.earned_total,
                            "withdrawn_total": figures.withdrawn_total,
                        }
                        if figures is not None
                        else {}
                    ),
                )
            )
        return tuple(out)

    async def _token_info(self, w3: AsyncWeb3[Any], token: str) -> tuple[str, int]:
        """Symbol and decimals, read once per token (a token without them shows its address)."""
        known = self._tokens.get(token)
        if known is not None:
            return known
        abi = load_artifact("FabstirTestToken").abi
        contract = w3.eth.contract(address=token, abi=abi)  # type: ignore[call-overload]
        try:
            info = (
                str(await contract.functions.symbol().call()),
                int(await contract.functions.decimals().call()),
            )
        except Exception:
            info = (token[:10], 18)
        self._tokens[token] = info
        return info

    def _contract(self, w3: AsyncWeb3[Any], name: str) -> Any:
        address = str(getattr(self.chain, _CONTRACTS[name]))
        return w3.eth.contract(address=address, abi=load_artifact(name).abi)  # type: ignore[call-overload]

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
        if self.sender is None:
            why = self._wallet_detail or "the wallet is locked"
            raise ChainUnavailableError(f"cannot sign: {why}")
        return self.sender

    def _call_for(self, action: ChainAction, w3: AsyncWeb3[Any]) -> tuple[Any, int]:
        """The contract call and value that carry out an action."""
        if isinstance(action, Withdraw):
            if not self.chain.host_earnings:
                raise ChainUnavailableError("chain.host_earnings is not set")
            return self._contract(w3, "HostEarnings").functions.withdraw(action.token), 0
        if not self.chain.node_registry:
            raise ChainUnavailableError("chain.node_registry is not set")
        nodes = self._contract(w3, "NodeRegistry").functions
        match action:
            case Register():
                ids = [model_id_bytes(m) for m, _ in action.models]
                prices = [p for _, p in action.models]
                call = nodes.register(ids, prices, action.payout, action.metadata)
                return call, action.stake_wei
            case UpdateModels():
                ids = [model_id_bytes(m) for m, _ in action.models]
                return nodes.setModels(ids, [p for _, p in action.models]), 0
            case SetPrice():
                return nodes.setPrice(model_id_bytes(action.model_id), action.price_per_million), 0
            case UpdateMetadata():
                return nodes.setMetadata(action.metadata), 0
            case Unregister():
                return nodes.unregister(), 0
        raise AssertionError(action)

    async def prepare(self, action: ChainAction) -> PreparedTx:
        """Build and preview the transaction an action needs; nothing is signed yet."""
        sender = self._ready_sender()
        call, value = self._call_for(action, sender.w3)
        preview = await sender.preview(call, value)
        return PreparedTx(action, describe(action), call, value, preview)

    async def execute(self, prepared: PreparedTx) -> TxOutcome:
        """Sign and send what the operator confirmed, then wait for it to be mined."""
        sender = self._ready_sender()
        sent = await sender.send(
            prepared.call, prepared.value_wei, prepared.label, prepared.preview
        )
        outcome = await sender.wait(sent.tx_hash)
        self._kick.set()
        return outcome
