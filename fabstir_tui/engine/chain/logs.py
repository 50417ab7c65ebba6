"""Decode raw eth_getLogs entries with our contracts' ABIs into plain, JSON-friendly values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

AbiItem = Mapping[str, Any]
# What the follower is told to watch: contract name -> (address, ABI).
ContractSpec = Mapping[str, tuple[str, Sequence[AbiItem]]]


class LogDecodeError(ValueError):
    """A log matched one of our events by topic but its data does not fit the ABI."""


@dataclass(frozen=True, slots=True)
class DecodedLog:
    """One contract event, decoded: ints are ints, bytes are 0x-hex, addresses checksummed."""

    contract: str
    event: str
    args: dict[str, Any] = field(hash=False)
    address: str
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    block_time: int


@lru_cache(maxsize=4096)
def checksum(address: str) -> str:
    """EIP-55 costs a keccak per call; the same few addresses recur in every log."""
    return str(to_checksum_address(address))


def canonical_type(param: AbiItem) -> str:
    """The type as it appears in an event signature (tuples spelled out as their members)."""
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param.get("components", ()))
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def event_topic(item: AbiItem) -> str:
    """topic0 of an event: keccak of its canonical signature, 0x-hex."""
    types = ",".join(canonical_type(p) for p in item.get("inputs", ()))
    return "0x" + keccak(text=f"{item['name']}({types})").hex()


def _is_dynamic(param: AbiItem) -> bool:
    """Indexed dynamic values are stored as their hash in a topic, not the value itself."""
    kind = str(param["type"])
    return kind in ("string", "bytes") or kind.endswith("]") or kind.startswith("tuple")


def normalise(param: AbiItem, value: Any) -> Any:
    """Turn eth_abi output into plain values by ABI type, so handlers and JSON see one shape."""
    kind = str(param["type"])
    if kind.endswith("]"):
        element = dict(param)
        element["type"] = kind[: kind.rindex("[")]
        return [normalise(element, v) for v in value]
    if kind == "tuple":
        components = list(param.get("components", ()))
        if components and all(c.get("name") for c in components):
            return {str(c["name"]): normalise(c, v) for c, v in zip(components, value, strict=True)}
        return [normalise(c, v) for c, v in zip(components, value, strict=True)]
    if kind == "address":
        return checksum(str(value))
    if kind.startswith("bytes"):
        return "0x" + bytes(value).hex()
    if kind.startswith(("uint", "int")):
        return int(value)
    return value


def _bloom_bits(value: bytes) -> tuple[int, int, int]:
    """The three bits of the 2048-bit logs bloom that `value` sets (Yellow Paper, M3:2048)."""
    digest = keccak(value)
    a, b, c = ((digest[i] << 8 | digest[i + 1]) & 2047 for i in (0, 2, 4))
    return a, b, c


def _in_bloom(bloom: bytes, bits: tuple[int, int, int]) -> bool:
    return all(bloom[255 - bit // 8] >> (bit % 8) & 1 for bit in bits)


@dataclass(frozen=True, slots=True)
class _Event:
    contract: str
    name: str
    inputs: tuple[AbiItem, ...]


class LogDecoder:
    """Knows every event of the followed contracts by (address, topic0)."""

    def __init__(self, contracts: ContractSpec) -> None:
        self._events: dict[tuple[str, str], _Event] = {}
        self._addresses: list[str] = []
        self._bloom_bits: list[tuple[int, int, int]] = []
        for name, (address, abi) in contracts.items():
            checksum = to_checksum_address(address)
            self._addresses.append(checksum)
            self._bloom_bits.append(_bloom_bits(bytes.fromhex(checksum[2:])))
            for item in abi:
                if item.get("type") != "event" or item.get("anonymous"):
                    continue
                inputs = tuple(
                    {**p, "name": p.get("name") or f"arg{i}"}
                    for i, p in enumerate(item.get("inputs", ()))
                )  # unnamed parameters get positional names, so args stays a dict
                event = _Event(name, str(item["name"]), inputs)
                self._events[(checksum.lower(), event_topic(item))] = event

    @property
    def addresses(self) -> list[str]:
        """The checksummed contract addresses, for the eth_getLogs address filter."""
        return list(self._addresses)

    def bloom_matches(self, logs_bloom: str) -> bool:
        """Whether a block's logsBloom may hold a log of ours (false positives, no misses)."""
        bloom = bytes.fromhex(logs_bloom.removeprefix("0x"))
        return len(bloom) != 256 or any(_in_bloom(bloom, b) for b in self._bloom_bits)

    def decode(self, raw: Mapping[str, Any], block_time: int) -> DecodedLog | None:
        """Decode one raw JSON-RPC log; None for events not in the ABIs (or anonymous ones)."""
        topics = [str(t).lower() for t in raw.get("topics", ())]
        if not topics:
            return None
        event = self._events.get((str(raw["address"]).lower(), topics[0]))
        if event is None:
            return None
        args: dict[str, Any] = {}
        indexed = [p for p in event.inputs if p.get("indexed")]
        plain = [p for p in event.inputs if not p.get("indexed")]
        if len(indexed) != len(topics) - 1:
            raise LogDecodeError(
                f"{event.contract}.{event.name} in tx {raw.get('transactionHash')}: "
                f"{len(topics) - 1} indexed topics, the ABI has {len(indexed)}"
            )
        for param, topic in zip(indexed, topics[1:], strict=True):
            if _is_dynamic(param):
                args[str(param["name"])] = topic  # only the keccak of the value is on-chain
            else:
                (value,) = abi_decode([canonical_type(param)], bytes.fromhex(topic[2:]))
                args[str(param["name"])] = normalise(param, value)
        data = bytes.fromhex(str(raw.get("data", "0x"))[2:])
        try:
            values = abi_decode([canonical_type(p) for p in plain], data)
        except Exception as exc:  # eth_abi raises several unrelated types for bad data
            raise LogDecodeError(
                f"{event.contract}.{event.name} in tx {raw.get('transactionHash')}: "
                f"data does not match the ABI ({exc})"
            ) from exc
        for param, value in zip(plain, values, strict=True):
            args[str(param["name"])] = normalise(param, value)
        return DecodedLog(
            contract=event.contract,
            event=event.name,
            args=args,
            address=checksum(str(raw["address"])),
            tx_hash=str(raw["transactionHash"]).lower(),
            log_index=int(str(raw["logIndex"]), 16),
            block_number=int(str(raw["blockNumber"]), 16),
            block_hash=str(raw["blockHash"]).lower(),
            block_time=block_time,
        )
