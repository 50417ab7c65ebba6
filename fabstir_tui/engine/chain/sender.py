"""TxSender: previews, signs locally, journals before broadcasting, confirms and speeds up.

Nonces. One counter per sender behind an asyncio.Lock held from nonce choice through signing,
journaling and broadcasting, so concurrent sends get consecutive nonces and reach the node in
order (the signing middleware's races are why we keep our own counter). A nonce is given back
only when the node *certainly* does not hold the transaction: it answered the broadcast with
one of the known refusals in txerrors.CERTAIN_REJECTIONS (insufficient funds, fee below base
fee, underpriced, intrinsic gas, block gas limit, bad signature or chain id), or no connection
was ever made and the provider made one attempt only (web3 retries eth_sendRawTransaction by
default, and an earlier attempt may have got through: build the AsyncHTTPProvider with
exception_retry_configuration=None to make refusals certain). Everything else is uncertain:
a timeout, a connection cut mid-request, an HTTP 5xx, or any other error answer (a load
balancer's -32603 "internal error" or -32005 "limit exceeded" may come after a backend took
the transaction). An uncertain transaction stays pending, keeps its nonce, and `wait`/`start`
look for it and rebroadcast it. A nonce given back below the top of the counter is reused by
the next send, so no gap strands later nonces.

Replacements. `speed_up` signs the same nonce with higher fees and journals it with
`replaces` = the transaction it outbids. All journaled transactions of one nonce form a group:
the one that is mined wins (mined/failed) and the rest are marked `replaced` with
`replaced_by` = the winner. Only the newest of a group is ever rebroadcast.

Call `start()` once before sending: it settles or rebroadcasts what a previous run left
pending. `FABSTIR_CRASH_AT=tx_after_journal` (tests) dies between journal and broadcast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract.base_contract import BaseContractFunction
from web3.exceptions import (
    RequestTimedOut,
    Web3RPCError,
)
from web3.providers.rpc.utils import ExceptionRetryConfiguration, check_if_retry_on_failure
from web3.types import RPCEndpoint

from fabstir_tui.config import ChainSection
from fabstir_tui.engine.chain.confirm import Confirmer
from fabstir_tui.engine.chain.events import TxSettled, TxSubmitted
from fabstir_tui.engine.chain.fees import (
    gwei_to_wei,
    l1_fee_enabled,
)
from fabstir_tui.engine.chain.journal import JournalEntry, TxJournal
from fabstir_tui.engine.chain.nonces import NonceCounter
from fabstir_tui.engine.chain.preview import Previewer, tx_dict
from fabstir_tui.engine.chain.reverts import RevertDecoder, default_decoder, rpc_error_message
from fabstir_tui.engine.chain.rpc_pool import url_host
from fabstir_tui.engine.chain.txerrors import (
    TRANSPORT_ERRORS,
    RpcUnavailableError,
    TxBroadcastUncertain,
    TxError,
    TxRejectedError,
    classify_rejection,
    crash_point,
    describe_transport_error,
    error_code,
    guarded,
    never_reached_node,
)
from fabstir_tui.engine.chain.txtypes import (
    SentTx,
    TxCall,
    TxOutcome,
    TxPreview,
    as_call,
    sent_tx,
)
from fabstir_tui.engine.events import Event, EventBus
from fabstir_tui.engine.store import Store

T = TypeVar("T")
Call = TxCall | BaseContractFunction
Broadcast = Literal["accepted", "nonce_used", "rejected", "uncertain", "unreached"]
_KNOWN = ("already known", "already imported", "known transaction", "already in mempool")
_CONFIG_CONTRACTS = {
    "node_registry": "NodeRegistry",
    "model_registry": "ModelRegistry",
    "job_marketplace": "JobMarketplace",
    "host_earnings": "HostEarnings",
}


def config_contract_names(chain: ChainSection) -> dict[str, str]:
    """Address → contract name from the [chain] section (the payment token may be foreign)."""
    names = {getattr(chain, key).lower(): name for key, name in _CONFIG_CONTRACTS.items()}
    return {address: name for address, name in names.items() if address}


def broadcast_is_retried(provider: object) -> bool:
    """web3 retries eth_sendRawTransaction by default; a refused last attempt then proves
    nothing about the earlier ones, so "never reached the node" is certain only without."""
    config = getattr(provider, "exception_retry_configuration", None)
    if not isinstance(config, ExceptionRetryConfiguration):
        return False
    method = RPCEndpoint("eth_sendRawTransaction")
    return check_if_retry_on_failure(method, config.method_allowlist)


class TxSender:
    """Sends one account's transactions with journaling, fee caps and readable errors."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        account: LocalAccount,
        store: Store,
        chain: ChainSection,
        bus: EventBus | None = None,
        *,
        contracts: Mapping[str, str] | None = None,
        decoder: RevertDecoder | None = None,
    ) -> None:
        self.w3 = w3
        self.account = account
        self.address = str(account.address)
        self.chain = chain
        self.chain_id = chain.chain_id
        self.journal = TxJournal(store)
        self.bus = bus
        self.decoder = decoder or default_decoder()
        self.previewer = Previewer(
            w3=w3,
            address=self.address,
            chain_id=chain.chain_id,
            cap_wei=gwei_to_wei(chain.max_fee_gwei),
            tip_wei=gwei_to_wei(chain.priority_fee_gwei),
            l1_fee_on=l1_fee_enabled(chain.l1_fee, chain.chain_id),
            decoder=self.decoder,
            url=self.url,
        )
        names = contracts if contracts is not None else config_contract_names(chain)
        self.names: dict[str, str] = {a.lower(): n for a, n in names.items()}
        self._lock = asyncio.Lock()
        self.nonces = NonceCounter()
        self._confirm = Confirmer(self)

    @property
    def url(self) -> str:
        """The RPC endpoint for error messages: scheme, host and port only, because provider
        URLs often carry an API key in the path."""
        return url_host(str(getattr(self.w3.provider, "endpoint_uri", None) or "the RPC node"))

    async def rpc(self, doing: str, awaitable: Awaitable[T]) -> T:
        """Await an RPC call; a transport failure becomes a readable RpcUnavailableError."""
        return await guarded(self.url, doing, awaitable)

    def publish(self, event: Event) -> None:
        """Tell the UI and logs; a sender without a bus (tests, CLI one-shots) stays quiet."""
        if self.bus is not None:
            self.bus.publish(event)

    # --- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the chain id, settle or rebroadcast what the journal left pending, then set
        the nonce counter past everything the chain or the journal has used."""
        chain_id = await self.rpc("reading the chain id", self.w3.eth.chain_id)
        if int(chain_id) != self.chain_id:
            raise TxError(
                f"the RPC at {self.url} serves chain {chain_id}, but chain.chain_id is "
                f"{self.chain_id}; fix chain.rpc_urls or chain.chain_id"
            )
        for nonce in sorted({e.nonce for e in self.journal.pending(self.address, chain_id)}):
            await self._confirm.check_nonce(nonce, rebroadcast=True)
        async with self._lock:
            await self._init_nonce()

    async def _init_nonce(self) -> None:
        """Set the counter from the chain's pending count and the journal (see NonceCounter)."""
        self.nonces.reset(
            await self._chain_next_nonce(),
            self.journal.highest_live_nonce(self.address, self.chain_id),
            {e.nonce for e in self.journal.pending(self.address, self.chain_id)},
        )

    async def _chain_next_nonce(self) -> int:
        """The chain's view, pool included, so our counter never reuses a nonce it holds."""
        count = await self.rpc(
            "reading the account nonce",
            self.w3.eth.get_transaction_count(self.account.address, "pending"),
        )
        return int(count)

    # --- fees and preview -----------------------------------------------------------------

    def as_call(self, call: Call, contract: str | None = None) -> TxCall:
        """Normalise a call and remember its contract's name for later revert messages."""
        tx_call = as_call(call, contract, self.names)
        if tx_call.contract:
            self.names.setdefault(tx_call.to.lower(), tx_call.contract)
        return tx_call

    async def preview(
        self, call: Call, value: int = 0, *, gas: int | None = None, contract: str | None = None
    ) -> TxPreview:
        """Everything the operator confirms before signing; a call that would revert raises
        TxRevertedError with the decoded reason, a cap below the base fee FeeCapError."""
        tx_call = self.as_call(call, contract)
        nonce_hint = self.nonces.next if self.nonces.next is not None else 0
        return await self.previewer.preview(tx_call, value, gas, nonce_hint)

    # --- sending ----------------------------------------------------------------------------

    async def send(
        self,
        call: Call,
        value: int = 0,
        label: str = "",
        preview: TxPreview | None = None,
        *,
        gas: int | None = None,
        contract: str | None = None,
        on_journaled: Callable[[str], None] | None = None,
    ) -> SentTx:
        """Sign, journal (committed) before broadcasting, broadcast, publish TxSubmitted.
        `on_journaled(tx_hash)` runs after the journal commit and before the broadcast, so a
        caller can tie the hash to its own record (the job pipeline's pending effect)."""
        tx_call = self.as_call(call, contract)
        if preview is None:
            preview = await self.preview(tx_call, value, gas=gas)
        elif (preview.address, preview.data, preview.value_wei) != (
            tx_call.to,
            tx_call.data,
            value,
        ):
            raise ValueError("the preview was made for another call, target or value")
        label = label or tx_call.description
        async with self._lock:
            if not self.nonces.ready:
                await self._init_nonce()
            nonce = self.nonces.take()
            try:
                entry = self.sign(
                    tx_call,
                    value,
                    label,
                    nonce,
                    preview.gas_limit,
                    preview.max_fee_per_gas_wei,
                    preview.priority_fee_wei,
                )
                self.journal.insert(entry)
            except Exception:
                self.nonces.give_back(nonce)
                raise
            if on_journaled is not None:
                on_journaled(entry.hash)
            crash_point("tx_after_journal")
            result, why = await self.broadcast(entry)
            await self._after_first_broadcast(entry, result, why)
        self.publish(TxSubmitted(entry.hash, label, nonce, tx_call.to, value))
        return sent_tx(entry)

    def sign(
        self,
        call: TxCall,
        value: int,
        label: str,
        nonce: int,
        gas: int,
        max_fee: int,
        tip: int,
        replaces: str | None = None,
    ) -> JournalEntry:
        """Sign locally (no signing middleware: its nonce races) into a journal entry."""
        signed = self.account.sign_transaction(
            tx_dict(self.chain_id, call, value, nonce, gas, max_fee, tip)
        )
        return JournalEntry(
            hash="0x" + bytes(signed.hash).hex(),
            chain_id=self.chain_id,
            sender=self.address,
            nonce=nonce,
            to=call.to,
            label=label,
            value_wei=value,
            raw_tx="0x" + bytes(signed.raw_transaction).hex(),
            gas_limit=gas,
            max_fee_per_gas_wei=max_fee,
            priority_fee_wei=tip,
            status="pending",
            replaces=replaces,
        )

    async def broadcast(self, entry: JournalEntry) -> tuple[Broadcast, str]:
        """Hand the journaled raw transaction to the node and classify what happened."""
        try:
            await self.w3.eth.send_raw_transaction(HexBytes(entry.raw_tx))
        except RequestTimedOut as exc:
            return "uncertain", f"the broadcast timed out ({rpc_error_message(exc)})"
        except Web3RPCError as exc:
            message = rpc_error_message(exc)
            if any(marker in message.lower() for marker in _KNOWN):
                self.journal.mark_broadcast(entry.hash)
                return "accepted", message
            answer = classify_rejection(message, replacement=entry.replaces is not None)
            if answer == "uncertain":
                code = error_code(exc)
                said = f"error {code}: {message}" if code is not None else message
                return "uncertain", f"the node answered {said!r}, which is not a known refusal"
            return answer, message
        except TRANSPORT_ERRORS as exc:
            certain = never_reached_node(exc) and not broadcast_is_retried(self.w3.provider)
            return ("unreached" if certain else "uncertain"), (
                f"{describe_transport_error(exc)} ({self.url})"
            )
        self.journal.mark_broadcast(entry.hash)
        return "accepted", ""

    async def _after_first_broadcast(
        self, entry: JournalEntry, result: Broadcast, why: str
    ) -> None:
        """Bookkeeping for a new transaction's first broadcast (lock held)."""
        if result == "accepted":
            return
        if result == "uncertain":
            self.journal.mark_broadcast(entry.hash, f"broadcast uncertain: {why}")
            self.publish(
                TxSubmitted(entry.hash, entry.label, entry.nonce, entry.to or "", entry.value_wei)
            )
            raise TxBroadcastUncertain(
                f"{entry.label} ({entry.hash}) may not have reached the node: {why}. It stays "
                "journaled as pending; waiting on it looks for it and rebroadcasts it.",
                entry.hash,
            )
        if result == "nonce_used":
            error = (
                f"nonce {entry.nonce} is already used by another transaction from "
                f"{self.address} (is this key used by another wallet or node?): {why}"
            )
            self.settle_dropped(entry, error)
            self.nonces.raise_floor(await self._chain_next_nonce())
            raise TxRejectedError(f"{entry.label} was not sent: {error}; retry it", entry.hash, why)
        if result == "unreached":
            self.settle_dropped(entry, f"not sent, the RPC could not be reached: {why}")
            self.nonces.give_back(entry.nonce)
            raise RpcUnavailableError(
                f"cannot reach the chain RPC while sending {entry.label}: {why}. Nothing was "
                "sent (the journal marks it dropped). Check that the node or provider is up "
                "and that chain.rpc_urls is right, then retry."
            )
        # "rejected": one of CERTAIN_REJECTIONS, so the node holds nothing for this nonce
        self.settle_dropped(entry, f"rejected by the node: {why}")
        self.nonces.give_back(entry.nonce)
        raise TxRejectedError(
            f"{entry.label} was not sent: the node refused it: {why}", entry.hash, why
        )

    def settle_dropped(self, entry: JournalEntry, error: str) -> None:
        """Mark a transaction that will never be mined, saying why, and tell the bus once."""
        if self.journal.settle(entry.hash, "dropped", error=error):
            self.publish(TxSettled(entry.hash, entry.label, "dropped", error=error))

    # --- waiting and replacing --------------------------------------------------------------

    async def wait(
        self, tx_hash: str, timeout: float | None = None, *, follow: bool = True
    ) -> TxOutcome:
        """Wait for a journaled transaction to settle (chain.receipt_timeout_s by default);
        with `follow`, a replaced transaction's wait returns the winner's outcome."""
        limit = self.chain.receipt_timeout_s if timeout is None else timeout
        return await self._confirm.wait(tx_hash.lower(), limit, follow)

    async def transact(
        self,
        call: Call,
        value: int = 0,
        label: str = "",
        preview: TxPreview | None = None,
        *,
        gas: int | None = None,
        contract: str | None = None,
        timeout: float | None = None,
    ) -> TxOutcome:
        """send + wait; an uncertain broadcast is waited on too (the wait rebroadcasts)."""
        try:
            sent = await self.send(call, value, label, preview, gas=gas, contract=contract)
        except TxBroadcastUncertain as exc:
            return await self.wait(exc.tx_hash, timeout)
        return await self.wait(sent.tx_hash, timeout)

    async def speed_up(self, tx_hash: str, bump_pct: int = 15) -> SentTx:
        """Outbid a pending transaction with the same nonce and fees raised ≥ bump_pct,
        never above the cap; the journal links the replacement to what it replaces."""
        return await self._confirm.speed_up(tx_hash.lower(), bump_pct)
