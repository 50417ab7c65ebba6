"""Chain events on the engine bus: transactions, the followed head, applied logs, connections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fabstir_tui.engine.events import Event

TxStatus = Literal["pending", "mined", "failed", "replaced", "dropped"]
ConnectionState = Literal["connected", "polling", "reconnecting", "down"]


@dataclass(frozen=True, slots=True)
class TxSubmitted(Event):
    """A signed transaction was journaled and broadcast."""

    tx_hash: str
    label: str
    nonce: int
    to: str
    value: int
    replaces: str = ""  # for a speed-up: the transaction this one outbids


@dataclass(frozen=True, slots=True)
class TxSettled(Event):
    """A journaled transaction reached a final state; `error` is a readable revert reason."""

    tx_hash: str
    label: str
    status: TxStatus
    block_number: int | None = None
    fee_wei: int = 0
    error: str = ""
    replaced_by: str = ""  # for status "replaced": the transaction that was mined instead


@dataclass(frozen=True, slots=True)
class ChainHead(Event):
    """The follower's view of the chain: newest block, what it has applied, and lag."""

    block_number: int
    applied_block: int
    synced: bool


@dataclass(frozen=True, slots=True)
class ChainLogApplied(Event):
    """A contract event was applied (once) to the store."""

    contract: str
    event: str
    args: dict[str, Any] = field(hash=False)
    tx_hash: str
    log_index: int
    block_number: int
    block_time: int
    block_hash: str = ""


@dataclass(frozen=True, slots=True)
class ChainReorged(Event):
    """Blocks after `fork_block` (the newest block still on the chain) were replaced; what was
    applied from them was rolled back. `depth` counts the blocks the cursor moved back."""

    fork_block: int
    depth: int


@dataclass(frozen=True, slots=True)
class ChainConnection(Event):
    """How the follower reaches the chain now, and why it changed."""

    state: ConnectionState
    url: str
    detail: str = ""


WalletState = Literal["none", "locked", "unlocking", "unlocked", "error"]


@dataclass(frozen=True, slots=True)
class TokenBalance:
    """One payment token as the Earnings screen shows it (amounts in base units)."""

    token: str
    symbol: str
    decimals: int
    withdrawable: int
    held_in_escrow: int = 0
    jobs_awaiting_release: int = 0
    earned_today: int = 0
    earned_7d: int = 0
    earned_total: int = 0
    withdrawn_total: int = 0


@dataclass(frozen=True, slots=True)
class ChainStatus(Event):
    """Everything the header and the Earnings screen show about the chain, at one instant."""

    enabled: bool
    chain_id: int
    url: str = ""
    block: int | None = None
    applied_block: int | None = None
    synced: bool = False
    connection: str = ""
    address: str = ""
    wallet: WalletState = "none"
    wallet_detail: str = ""
    registered: bool = False
    stake_wei: int = 0
    min_stake_wei: int = 0
    payout: str = ""
    metadata: str = ""
    models: tuple[tuple[str, int], ...] = ()
    price_token: str = ""
    eth_balance_wei: int | None = None
    low_gas: bool = False
    base_fee_wei: int | None = None
    priority_fee_wei: int = 0
    fee_bps: int = 0
    balances: tuple[TokenBalance, ...] = ()
    read_only: bool = False
    payment_token: str = ""
    keystore: str = ""
    error: str = ""
