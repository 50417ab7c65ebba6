"""What the sender takes and gives back: calls, previews, sent transactions, outcomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_utils.abi import collapse_if_tuple
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3.contract.base_contract import BaseContractFunction

from fabstir_tui.engine.chain.events import TxStatus
from fabstir_tui.engine.chain.journal import JournalEntry
from fabstir_tui.engine.chain.reverts import artifact_abis, display_value
from fabstir_tui.engine.chain.txerrors import TxFailedError


@dataclass(frozen=True, slots=True)
class TxCall:
    """A call to send: target, calldata, and the names an operator needs to recognise it."""

    to: str
    data: bytes = b""
    contract: str = ""
    function: str = ""
    inputs: tuple[Mapping[str, Any], ...] = ()

    @property
    def description(self) -> str:
        """'NodeRegistry.register', or what the call is when there is no ABI."""
        if self.function:
            return f"{self.contract or 'contract'}.{self.function}"
        if not self.data:
            return f"transfer to {self.to}"
        return f"call to {self.contract or self.to}"


@dataclass(frozen=True, slots=True)
class PreviewArg:
    """One decoded argument, as the confirm dialog shows it."""

    name: str
    type: str
    display: str


@dataclass(frozen=True, slots=True)
class TxPreview:
    """What the operator confirms before signing; `total_max_cost_wei` is the worst case."""

    chain_id: int
    sender: str
    contract: str
    address: str
    function: str
    args: tuple[PreviewArg, ...]
    data: bytes
    value_wei: int
    gas_estimate: int
    gas_limit: int
    base_fee_wei: int
    max_fee_per_gas_wei: int
    priority_fee_wei: int
    fee_capped: bool
    l1_fee_wei: int

    @property
    def l2_max_fee_wei(self) -> int:
        """Execution cost if every unit of gas is used at the max fee."""
        return self.gas_limit * self.max_fee_per_gas_wei

    @property
    def total_max_cost_wei(self) -> int:
        """Value + worst-case execution fee + L1 data fee: what the account must hold."""
        return self.value_wei + self.l2_max_fee_wei + self.l1_fee_wei

    @property
    def description(self) -> str:
        """'NodeRegistry.register' for dialogs and labels."""
        return f"{self.contract}.{self.function}" if self.function else self.contract


@dataclass(frozen=True, slots=True)
class SentTx:
    """A signed, journaled and broadcast transaction."""

    tx_hash: str
    nonce: int
    label: str
    to: str
    value_wei: int
    gas_limit: int
    max_fee_per_gas_wei: int
    priority_fee_wei: int
    replaces: str | None = None


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """How a transaction ended; `error` is a readable reason for failed/dropped/replaced."""

    tx_hash: str
    label: str
    nonce: int
    status: TxStatus
    block_number: int | None
    gas_used: int | None
    effective_gas_price_wei: int | None
    l1_fee_wei: int | None
    fee_wei: int
    error: str | None
    replaced_by: str | None = None

    @property
    def ok(self) -> bool:
        """Mined and successful: anything else needs the operator's attention."""
        return self.status == "mined"

    def raise_for_failure(self) -> TxOutcome:
        """For callers that treat anything but success as an error."""
        if not self.ok:
            raise TxFailedError(
                f"{self.label} ({self.tx_hash}) {self.status}: {self.error or 'no reason known'}",
                self.tx_hash,
                self.error or "",
            )
        return self

    @classmethod
    def from_entry(cls, entry: JournalEntry) -> TxOutcome:
        """The outcome is what the journal recorded: one source of truth across restarts."""
        return cls(
            tx_hash=entry.hash,
            label=entry.label,
            nonce=entry.nonce,
            status=entry.status,
            block_number=entry.block_number,
            gas_used=entry.gas_used,
            effective_gas_price_wei=entry.effective_gas_price_wei,
            l1_fee_wei=entry.l1_fee_wei,
            fee_wei=entry.fee_wei,
            error=entry.error,
            replaced_by=entry.replaced_by,
        )


def sent_tx(entry: JournalEntry) -> SentTx:
    """The SentTx view of a journaled transaction."""
    return SentTx(
        tx_hash=entry.hash,
        nonce=entry.nonce,
        label=entry.label,
        to=entry.to or "",
        value_wei=entry.value_wei,
        gas_limit=entry.gas_limit,
        max_fee_per_gas_wei=entry.max_fee_per_gas_wei,
        priority_fee_wei=entry.priority_fee_wei,
        replaces=entry.replaces,
    )


def as_call(
    call: TxCall | BaseContractFunction, contract: str | None, names: Mapping[str, str]
) -> TxCall:
    """A web3 contract function (sync or async) or a TxCall to a TxCall with names filled in:
    the given name, else the configured address book, else the artifact whose ABI it uses."""
    if isinstance(call, TxCall):
        name = contract or call.contract or names.get(call.to.lower(), "")
        return TxCall(to_checksum_address(call.to), call.data, name, call.function, call.inputs)
    if not call.address:
        raise ValueError(f"{call.fn_name} is bound to no contract address")
    address = to_checksum_address(call.address)
    # web3 keeps encoding private; it is the one encoder that knows every argument form.
    data = HexBytes(call._encode_transaction_data())
    name = contract or names.get(address.lower(), "") or _artifact_for_abi(call.contract_abi)
    inputs = tuple(call.abi.get("inputs", ()))
    return TxCall(address, bytes(data), name, str(call.fn_name), inputs)


def _artifact_for_abi(abi: Any) -> str:
    """The name of our artifact whose ABI this is, or '' for a foreign contract."""
    wanted = list(abi)
    for name, known in artifact_abis().items():
        if list(known) == wanted:
            return name
    return ""


def decode_args(call: TxCall) -> tuple[PreviewArg, ...]:
    """The call's arguments decoded back from its calldata, so the preview shows what is
    signed rather than what the caller meant to pass."""
    if not call.inputs or len(call.data) < 4:
        return ()
    types = [collapse_if_tuple(dict(i)) for i in call.inputs]
    try:
        values = abi_decode(types, call.data[4:])
    except (DecodingError, ValueError):
        return (PreviewArg("calldata", "bytes", "0x" + call.data.hex()),)
    return tuple(
        PreviewArg(str(i.get("name") or f"arg{n}"), str(t), display_value(i, v))
        for n, (i, t, v) in enumerate(zip(call.inputs, types, values, strict=False))
    )


@dataclass(frozen=True, slots=True)
class RawFields:
    """The fields of a journaled signed transaction needed to replay or replace it."""

    to: str | None
    data: bytes
    value_wei: int
    gas: int
    max_fee_per_gas_wei: int
    priority_fee_wei: int


def raw_fields(raw_tx: str) -> RawFields:
    """Decode a journaled raw EIP-1559 transaction."""
    tx = TypedTransaction.from_bytes(HexBytes(raw_tx)).as_dict()
    to = tx.get("to")
    return RawFields(
        to=to_checksum_address(to) if to else None,
        data=bytes(tx.get("data", b"")),
        value_wei=int(tx.get("value", 0)),
        gas=int(tx["gas"]),
        max_fee_per_gas_wei=int(tx["maxFeePerGas"]),
        priority_fee_wei=int(tx["maxPriorityFeePerGas"]),
    )
