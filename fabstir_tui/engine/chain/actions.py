"""Operator actions on our contracts: what each one calls, and the prepared transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fabstir_tui.engine.chain.txtypes import TxPreview

ETH = "0x0000000000000000000000000000000000000000"


class ReadOnlyError(RuntimeError):
    """The node runs read-only; no transaction is prepared or signed."""


class ChainUnavailableError(RuntimeError):
    """An action needs something the chain side does not have yet (RPC, contract, key)."""


@dataclass(frozen=True, slots=True)
class Register:
    """Register with a stake, models and prices (per million tokens of `price_token`, the one
    token this host is paid in), payout and metadata."""

    stake_wei: int
    models: tuple[tuple[str, int], ...]
    price_token: str
    payout: str
    metadata: str


@dataclass(frozen=True, slots=True)
class UpdateModels:
    """Replace the served models and their prices."""

    models: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class SetPrice:
    """Change the price of one served model."""

    model_id: str
    price_per_million: int


@dataclass(frozen=True, slots=True)
class UpdateMetadata:
    """Publish new metadata (API URL, peer id, GPU facts)."""

    metadata: str


@dataclass(frozen=True, slots=True)
class Unregister:
    """Leave the registry and take the stake back."""


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Pull the whole balance of one token to the payout address."""

    token: str


ChainAction = Register | UpdateModels | SetPrice | UpdateMetadata | Unregister | Withdraw


@dataclass(frozen=True, slots=True)
class TxNote:
    """What a call means beyond its arguments (the amount a withdraw moves, and where)."""

    label: str
    text: str = ""
    amount: int | None = None
    symbol: str = ""
    decimals: int = 18


@dataclass(frozen=True, slots=True)
class PreparedTx:
    """An action turned into a call and previewed: the confirm dialog shows `preview`."""

    action: ChainAction
    label: str
    call: Any = field(repr=False)
    value_wei: int
    preview: TxPreview
    notes: tuple[TxNote, ...] = ()


def describe(action: ChainAction) -> str:
    """A short line for audit and logs: never a secret, only what was asked."""
    match action:
        case Register():
            ids = ", ".join(m[:10] for m, _ in action.models)
            return f"register: stake {action.stake_wei} wei, models {ids}"
        case UpdateModels():
            return f"update models: {', '.join(m[:10] for m, _ in action.models)}"
        case SetPrice():
            return f"set price of {action.model_id[:10]} to {action.price_per_million} per M"
        case UpdateMetadata():
            return "update metadata"
        case Unregister():
            return "unregister and take the stake back"
        case Withdraw():
            return f"withdraw {'ETH' if action.token == ETH else action.token}"
    raise AssertionError(action)


def registration_metadata(
    api_url: str, gpus: list[str], peer_id: str = "", multiaddrs: Sequence[str] = ()
) -> str:
    """The registry's metadata JSON; parts that do not exist yet stay empty (DESIGN §4)."""
    document = {
        "peer_id": peer_id,
        "multiaddrs": list(multiaddrs),
        "api_url": api_url,
        "gpus": gpus,
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def model_id_bytes(model_id: str) -> bytes:
    """A 0x-hex SHA-256 as the bytes32 the contracts take; a clear error otherwise."""
    text = model_id.removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"model id {model_id!r} is not a SHA-256 (64 hex digits)")
    return raw
