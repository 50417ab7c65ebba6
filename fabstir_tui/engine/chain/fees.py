"""EIP-1559 fees under the operator's cap, replacement bumps, and the OP-stack L1 data fee."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from fabstir_tui.engine.chain.txerrors import FeeCapError

GWEI = 10**9
MIN_REPLACEMENT_BUMP_PCT = 10  # geth and op-geth refuse a replacement that raises fees less
# The OP-stack predeploy every Base block has; anvil has none (tests install a test double).
GAS_PRICE_ORACLE = to_checksum_address("0x420000000000000000000000000000000000000f")
GET_L1_FEE_SELECTOR = keccak(text="getL1Fee(bytes)")[:4]
L1_FEE_CHAIN_IDS = frozenset({8453, 84532})  # Base, Base Sepolia


def gwei_to_wei(gwei: float) -> int:
    """Config speaks gwei (floats); the chain speaks integer wei, without float noise."""
    return int(Decimal(str(gwei)) * GWEI)


def wei_to_gwei_text(wei: int) -> str:
    """A fee for messages: '1.5 gwei', trailing zeros trimmed."""
    text = f"{Decimal(wei) / GWEI:.9f}".rstrip("0").rstrip(".")
    return f"{text} gwei"


@dataclass(frozen=True, slots=True)
class FeeQuote:
    """What a transaction offers per gas, and why: the base fee it was priced against."""

    base_fee_wei: int
    max_fee_per_gas_wei: int
    priority_fee_wei: int
    capped: bool  # True when the operator's cap, not 2*base + tip, set the max fee


def quote_fees(base_fee_wei: int, cap_wei: int, tip_wei: int) -> FeeQuote:
    """maxFee = min(2*base + tip, cap): room for two full blocks of base-fee rise, never above
    the operator's cap; a cap below the base fee could never be included, so it is refused."""
    if cap_wei < base_fee_wei:
        raise FeeCapError(
            f"the fee cap chain.max_fee_gwei = {wei_to_gwei_text(cap_wei)} is below the "
            f"current base fee of {wei_to_gwei_text(base_fee_wei)}: a transaction priced "
            "under the base fee cannot be included. Raise chain.max_fee_gwei or wait until "
            "the network is less busy."
        )
    wanted = 2 * base_fee_wei + tip_wei
    max_fee = min(wanted, cap_wei)
    return FeeQuote(
        base_fee_wei=base_fee_wei,
        max_fee_per_gas_wei=max_fee,
        priority_fee_wei=min(tip_wei, max_fee),
        capped=wanted > cap_wei,
    )


def bump_fees(
    old_max_fee_wei: int, old_tip_wei: int, fresh: FeeQuote, cap_wei: int, bump_pct: int
) -> tuple[int, int]:
    """Fees for a replacement: both raised by ≥ bump_pct (nodes demand ≥ 10 %), at least the
    fresh quote, and refused rather than silently clipped when the cap is in the way."""
    if bump_pct < MIN_REPLACEMENT_BUMP_PCT:
        raise ValueError(
            f"a replacement must raise fees by at least {MIN_REPLACEMENT_BUMP_PCT} % "
            f"(asked {bump_pct} %); nodes refuse smaller bumps"
        )
    max_fee = max(_raise_pct(old_max_fee_wei, bump_pct), fresh.max_fee_per_gas_wei)
    tip = max(_raise_pct(old_tip_wei, bump_pct), fresh.priority_fee_wei)
    if max_fee > cap_wei:
        raise FeeCapError(
            f"speeding up needs a max fee of {wei_to_gwei_text(max_fee)}, above the cap "
            f"chain.max_fee_gwei = {wei_to_gwei_text(cap_wei)}; raise the cap to replace "
            "the transaction, or keep waiting for the original"
        )
    return max_fee, min(tip, max_fee)


def _raise_pct(value: int, pct: int) -> int:
    """value * (100 + pct) / 100 rounded up, and at least value + 1 so zero tips still move."""
    return max(-(-value * (100 + pct) // 100), value + 1)


def l1_fee_enabled(setting: Literal["auto", "on", "off"], chain_id: int) -> bool:
    """'auto' means on where the chain is an OP-stack chain we know (Base and Base Sepolia)."""
    if setting == "auto":
        return chain_id in L1_FEE_CHAIN_IDS
    return setting == "on"


def get_l1_fee_calldata(unsigned_tx: bytes) -> bytes:
    """Calldata for GasPriceOracle.getL1Fee(bytes) of a serialized transaction."""
    return GET_L1_FEE_SELECTOR + abi_encode(["bytes"], [unsigned_tx])


def decode_uint256(result: bytes) -> int:
    """The single uint256 a view function returned."""
    (value,) = abi_decode(["uint256"], result)
    return int(value)


def serialize_unsigned_1559(tx: dict[str, Any]) -> bytes:
    """0x02 ‖ rlp([chainId, nonce, tip, maxFee, gas, to, value, data, accessList]): what the
    oracle prices (its signature overhead is part of the oracle's own formula)."""
    to = tx.get("to")
    fields: list[Any] = [
        int(tx["chainId"]),
        int(tx["nonce"]),
        int(tx["maxPriorityFeePerGas"]),
        int(tx["maxFeePerGas"]),
        int(tx["gas"]),
        bytes.fromhex(str(to)[2:]) if to else b"",
        int(tx.get("value", 0)),
        _data_bytes(tx.get("data", b"")),
        [],
    ]
    return b"\x02" + rlp_encode(fields)


def _data_bytes(data: Any) -> bytes:
    if isinstance(data, str):
        return bytes.fromhex(data.removeprefix("0x"))
    return bytes(data)


def rlp_encode(item: Any) -> bytes:
    """Minimal RLP (ints, bytes, lists): the rlp package ships no type information."""
    if isinstance(item, int):
        if item < 0:
            raise ValueError("RLP cannot encode negative integers")
        item = item.to_bytes((item.bit_length() + 7) // 8, "big") if item else b""
    if isinstance(item, bytes | bytearray):
        raw = bytes(item)
        if len(raw) == 1 and raw[0] < 0x80:
            return raw
        return _rlp_length(len(raw), 0x80) + raw
    if isinstance(item, list | tuple):
        payload = b"".join(rlp_encode(x) for x in item)
        return _rlp_length(len(payload), 0xC0) + payload
    raise TypeError(f"RLP cannot encode {type(item).__name__}")


def _rlp_length(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(encoded)]) + encoded
