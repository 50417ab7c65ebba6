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


@dataclass(frozen=True, slots=True)
class TxSettled(Event):
    """A journaled transaction reached a final state; `error` is a readable revert reason."""

    tx_hash: str
    label: str
    status: TxStatus
    block_number: int | None = None
    fee_wei: int = 0
    error: str = ""


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


@dataclass(frozen=True, slots=True)
class ChainReorged(Event):
    """Blocks from `fork_block` on were replaced; what was applied from them was rolled back."""

    fork_block: int
    depth: int


@dataclass(frozen=True, slots=True)
class ChainConnection(Event):
    """How the follower reaches the chain now, and why it changed."""

    state: ConnectionState
    url: str
    detail: str = ""
