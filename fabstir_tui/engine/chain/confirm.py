"""Confirming journaled transactions: receipts, replacement groups, rebroadcasts, and the
replay that explains a mined failure."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from hexbytes import HexBytes
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams, TxReceipt, Wei

from fabstir_tui.engine.chain.events import TxSettled, TxStatus, TxSubmitted
from fabstir_tui.engine.chain.fees import bump_fees, serialize_unsigned_1559
from fabstir_tui.engine.chain.journal import JournalEntry
from fabstir_tui.engine.chain.reverts import rpc_error_message
from fabstir_tui.engine.chain.txerrors import (
    RpcUnavailableError,
    TxBroadcastUncertain,
    TxError,
    TxRejectedError,
    TxTimeoutError,
    crash_point,
)
from fabstir_tui.engine.chain.txtypes import SentTx, TxCall, TxOutcome, raw_fields, sent_tx

if TYPE_CHECKING:
    from fabstir_tui.engine.chain.sender import TxSender

FIRST_POLL_S = 0.05  # anvil mines at once; a real chain's poll interval is reached by doubling
REBROADCAST_EVERY_S = 15.0  # how often a wait asks whether the node still holds the tx


class Confirmer:
    """The receipt side of a TxSender; shares its journal, RPC wrapper and bus."""

    def __init__(self, sender: TxSender) -> None:
        self.s = sender

    async def wait(self, tx_hash: str, limit_s: float, follow: bool) -> TxOutcome:
        """Poll until the transaction settles or `limit_s` passes (a wait that outlives a dead
        RPC ends with the RPC's readable error, not a timeout)."""
        s = self.s
        if s.journal.get(tx_hash) is None:
            raise TxError(f"{tx_hash} is not in this node's transaction journal")
        deadline = time.monotonic() + limit_s
        delay = FIRST_POLL_S
        rebroadcast_at = time.monotonic()
        rpc_error: RpcUnavailableError | None = None
        checked = False
        while True:
            entry = s.journal.get(tx_hash)
            assert entry is not None
            if entry.status != "pending":
                if entry.status == "replaced" and follow and entry.replaced_by:
                    remaining = max(0.0, deadline - time.monotonic())
                    return await self.wait(entry.replaced_by, remaining, follow)
                return TxOutcome.from_entry(entry)
            if checked and time.monotonic() >= deadline:
                if rpc_error is not None:
                    raise rpc_error
                raise TxTimeoutError(
                    f"{entry.label} ({entry.hash}) was not mined within {limit_s:g} s; it stays "
                    "journaled as pending and is checked again on the next start. If the "
                    "network is busy, speed it up.",
                    entry.hash,
                )
            try:
                rebroadcast = time.monotonic() >= rebroadcast_at
                await self.check_nonce(entry.nonce, rebroadcast)
                if rebroadcast:
                    rebroadcast_at = time.monotonic() + REBROADCAST_EVERY_S
                rpc_error = None
            except RpcUnavailableError as exc:
                rpc_error = exc
            checked = True
            now_entry = s.journal.get(tx_hash)
            if now_entry is not None and now_entry.status != "pending":
                continue  # settled (or noted) by that check: report it without sleeping
            await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, max(s.chain.poll_interval_s, FIRST_POLL_S))

    async def check_nonce(self, nonce: int, rebroadcast: bool) -> None:
        """Settle the group of transactions competing for `nonce` if one was mined or the
        nonce was taken; else, with `rebroadcast`, make sure the node holds the newest."""
        s = self.s
        pending = [
            e for e in s.journal.by_nonce(s.address, s.chain_id, nonce) if e.status == "pending"
        ]
        if not pending or await self._settle_if_mined(pending):
            return
        mined_count = await s.rpc(
            "reading the account nonce",
            s.w3.eth.get_transaction_count(s.account.address, "latest"),
        )
        if int(mined_count) > nonce:
            if await self._settle_if_mined(pending):  # mined between the two looks
                return
            for entry in pending:  # a lagging RPC backend may know the tx before its receipt
                if await self._node_knows(entry.hash):
                    return
            for entry in pending:
                s.settle_dropped(
                    entry,
                    f"nonce {nonce} was used by a transaction this node did not journal "
                    "(is this key used by another wallet or node?)",
                )
            return
        if rebroadcast:
            newest = max(pending, key=lambda e: (e.max_fee_per_gas_wei, e.created_at))
            await self._rebroadcast(newest, pending)

    async def _rebroadcast(self, entry: JournalEntry, group: list[JournalEntry]) -> None:
        """Broadcast again a transaction the node does not hold (a crash before the first
        broadcast, a node restart, an eviction)."""
        s = self.s
        if await self._node_knows(entry.hash):
            return
        result, why = await s.broadcast(entry)
        if result == "unreached":
            s.journal.note_error(entry.hash, f"rebroadcast did not get through: {why}")
        elif result == "uncertain":  # it may have got through: the next look finds out
            s.journal.note_error(entry.hash, f"rebroadcast uncertain: {why}")
        elif result == "nonce_used":
            await self.check_nonce(entry.nonce, rebroadcast=False)
        elif result == "rejected":  # a known, certain refusal (txerrors.CERTAIN_REJECTIONS)
            s.settle_dropped(entry, f"rebroadcast refused by the node: {why}")
            if len(group) == 1:
                s.nonces.give_back(entry.nonce)

    async def _node_knows(self, tx_hash: str) -> bool:
        """Whether the node holds the transaction (pool or chain): no blind rebroadcasts."""
        s = self.s
        try:
            await s.rpc("looking up a transaction", s.w3.eth.get_transaction(HexBytes(tx_hash)))
        except Web3RPCError:  # TransactionNotFound and kin
            return False
        return True

    async def speed_up(self, tx_hash: str, bump_pct: int) -> SentTx:
        """Outbid the newest pending transaction of this nonce (see TxSender.speed_up)."""
        s = self.s
        entry = s.journal.get(tx_hash)
        if entry is None:
            raise TxError(f"{tx_hash} is not in this node's transaction journal")
        await self.check_nonce(entry.nonce, rebroadcast=False)
        group = [
            e
            for e in s.journal.by_nonce(s.address, s.chain_id, entry.nonce)
            if e.status == "pending"
        ]
        if not group:
            settled = s.journal.get(entry.hash)
            status = settled.status if settled else entry.status
            raise TxError(f"{entry.label} ({entry.hash}) is already {status}; nothing to speed up")
        newest = max(group, key=lambda e: (e.max_fee_per_gas_wei, e.created_at))
        fresh = await s.previewer.quote()
        max_fee, tip = bump_fees(
            newest.max_fee_per_gas_wei,
            newest.priority_fee_wei,
            fresh,
            s.previewer.cap_wei,
            bump_pct,
        )
        fields = raw_fields(newest.raw_tx)
        replacement = s.sign(
            TxCall(fields.to or "", fields.data),
            fields.value_wei,
            newest.label,
            newest.nonce,
            fields.gas,
            max_fee,
            tip,
            replaces=newest.hash,
        )
        s.journal.insert(replacement)
        crash_point("tx_after_journal")
        result, why = await s.broadcast(replacement)
        if result == "unreached":
            s.settle_dropped(replacement, f"not sent, the RPC could not be reached: {why}")
            raise RpcUnavailableError(
                f"cannot reach the chain RPC to speed up {entry.label}: {why}. Nothing was "
                "sent; the original stays pending. Check the node or provider and retry."
            )
        if result in ("rejected", "nonce_used"):
            s.settle_dropped(replacement, f"replacement refused by the node: {why}")
            if result == "nonce_used":
                await self.check_nonce(entry.nonce, rebroadcast=False)
                why = f"too late, nonce {entry.nonce} is already used ({why})"
            raise TxRejectedError(f"speeding up {entry.label} failed: {why}", replacement.hash, why)
        s.publish(
            TxSubmitted(
                replacement.hash,
                replacement.label,
                replacement.nonce,
                replacement.to or "",
                replacement.value_wei,
                replaces=newest.hash,
            )
        )
        if result == "uncertain":
            s.journal.mark_broadcast(replacement.hash, f"broadcast uncertain: {why}")
            raise TxBroadcastUncertain(
                f"the replacement {replacement.hash} may not have reached the node: {why}. "
                "It stays journaled; waiting on it looks for it and rebroadcasts it.",
                replacement.hash,
            )
        return sent_tx(replacement)

    async def receipt(self, tx_hash: str) -> TxReceipt | None:
        """The receipt, or None while the transaction is not mined (web3 raises for that)."""
        try:
            return await self.s.rpc(
                "reading a receipt", self.s.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            )
        except TransactionNotFound:
            return None

    async def _settle_if_mined(self, pending: list[JournalEntry]) -> bool:
        """Whichever of the competing transactions has a receipt wins the nonce."""
        for entry in pending:
            receipt = await self.receipt(entry.hash)
            if receipt is not None:
                await self._settle_mined(entry, receipt, [e for e in pending if e is not entry])
                return True
        return False

    async def _settle_mined(
        self, entry: JournalEntry, receipt: TxReceipt, losers: list[JournalEntry]
    ) -> None:
        """Record the winner of a nonce (mined or failed, with its fee) and mark the rest
        replaced by it; each row's TxSettled is published once."""
        s = self.s
        ok = int(receipt["status"]) == 1
        block = int(receipt["blockNumber"])
        gas_used = int(receipt["gasUsed"])
        price = int(receipt["effectiveGasPrice"])
        l1_fee = await self._paid_l1_fee(entry, receipt)
        error = None if ok else await self.replay_failure(entry, receipt)
        status: TxStatus = "mined" if ok else "failed"
        if s.journal.settle(
            entry.hash,
            status,
            block_number=block,
            gas_used=gas_used,
            effective_gas_price_wei=price,
            l1_fee_wei=l1_fee,
            error=error,
        ):
            fee = gas_used * price + (l1_fee or 0)
            s.publish(TxSettled(entry.hash, entry.label, status, block, fee, error or ""))
        for loser in losers:
            why = f"replaced by {entry.hash}"
            if s.journal.settle(loser.hash, "replaced", replaced_by=entry.hash, error=why):
                s.publish(
                    TxSettled(
                        loser.hash, loser.label, "replaced", error=why, replaced_by=entry.hash
                    )
                )

    async def _paid_l1_fee(self, entry: JournalEntry, receipt: TxReceipt) -> int | None:
        """The receipt's l1Fee (OP-stack nodes report it); else the oracle at that block;
        None when it cannot be known, 0 where the chain has no L1 fee."""
        s = self.s
        reported: Any = dict(receipt).get("l1Fee")
        if reported is not None:
            return int(reported, 16) if isinstance(reported, str) else int(reported)
        if not s.previewer.l1_fee_on:
            return 0
        fields = raw_fields(entry.raw_tx)
        unsigned = serialize_unsigned_1559(
            {
                "chainId": s.chain_id,
                "nonce": entry.nonce,
                "to": fields.to,
                "value": fields.value_wei,
                "data": fields.data,
                "gas": fields.gas,
                "maxFeePerGas": fields.max_fee_per_gas_wei,
                "maxPriorityFeePerGas": fields.priority_fee_wei,
            }
        )
        try:
            return await s.previewer.l1_fee(unsigned, int(receipt["blockNumber"]))
        except TxError:
            return None

    async def replay_failure(self, entry: JournalEntry, receipt: TxReceipt) -> str:
        """Why a mined transaction failed: the same call (from, to, data, value, gas) replayed
        with eth_call on the state before its block, decoded; else the best explanation."""
        s = self.s
        fields = raw_fields(entry.raw_tx)
        block = int(receipt["blockNumber"])
        gas_used = int(receipt["gasUsed"])
        contract = s.names.get((fields.to or "").lower())
        params: TxParams = {
            "from": s.account.address,
            "data": HexBytes(fields.data),
            "value": Wei(fields.value_wei),
            "gas": fields.gas,
        }
        if fields.to:
            params["to"] = fields.to
        try:
            await s.rpc("replaying a failed transaction", s.w3.eth.call(params, max(block - 1, 0)))
        except RpcUnavailableError as exc:
            return f"failed on chain; its reason could not be replayed ({exc})"
        except ContractLogicError as exc:
            return s.decoder.from_exception(exc, contract) or str(exc)
        except Web3RPCError as exc:
            reason = s.decoder.from_exception(exc, contract)
            if reason is not None:
                return reason
            message = rpc_error_message(exc)
            if "out of gas" in message.lower() or "outofgas" in message.lower():
                return f"ran out of gas (gas limit {fields.gas})"
            return f"failed on chain; replaying it says: {message}"
        if gas_used >= fields.gas:
            return f"ran out of gas (used all {fields.gas})"
        return (
            f"failed on chain in block {block}, but the same call succeeds on the state before "
            "that block: a transaction earlier in the block changed the state"
        )
