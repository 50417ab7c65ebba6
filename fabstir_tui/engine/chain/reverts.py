"""Readable revert reasons: custom errors of our contracts, Error(string), Panic, replays."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.abi import collapse_if_tuple
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3.exceptions import (
    ContractLogicError,
    OffchainLookup,
    Web3RPCError,
)

from fabstir_tui.engine.chain.artifacts import ArtifactError, artifact_names, load_artifact

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string), what require(..., "msg") emits
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256), Solidity >= 0.8 checks

# Solidity's documented panic codes, so an operator sees "division by zero" and not 0x12.
PANIC_CODES: dict[int, str] = {
    0x00: "generic compiler-inserted panic",
    0x01: "assert() failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "conversion to an invalid enum value",
    0x22: "incorrectly encoded storage byte array",
    0x31: "pop() on an empty array",
    0x32: "array index out of bounds",
    0x41: "too much memory allocated or an array too large",
    0x51: "call to a zero-initialised internal function",
}
_LONG_BYTES = 64  # dynamic bytes longer than this are shortened in displays


@dataclass(frozen=True)
class ErrorSpec:
    """One custom error as declared by one contract's ABI."""

    contract: str
    name: str
    inputs: tuple[dict[str, Any], ...]

    @property
    def signature(self) -> str:
        """The canonical signature whose keccak gives the selector (tuples collapsed)."""
        return f"{self.name}({','.join(collapse_if_tuple(i) for i in self.inputs)})"

    @property
    def selector(self) -> bytes:
        """The 4 bytes a revert with this error starts with."""
        return keccak(text=self.signature)[:4]


def display_value(abi_input: Mapping[str, Any], value: Any) -> str:
    """One decoded ABI value as an operator reads it: checksummed, quoted, hex, nested."""
    typ = str(abi_input["type"])
    if typ.endswith("]"):
        inner = dict(abi_input, type=typ[: typ.rindex("[")])
        return "[" + ", ".join(display_value(inner, item) for item in value) + "]"
    if typ == "tuple":
        components = abi_input.get("components", [])
        if isinstance(value, Mapping):
            value = [value[c["name"]] for c in components]
        parts = [
            f"{c['name']}={display_value(c, v)}" if c.get("name") else display_value(c, v)
            for c, v in zip(components, value, strict=False)
        ]
        return "(" + ", ".join(parts) + ")"
    if typ == "address":
        return to_checksum_address(value)
    if typ == "bool":
        return "true" if value else "false"
    if typ == "string":
        return json.dumps(value, ensure_ascii=False)
    if typ.startswith("bytes"):
        raw = bytes(value) if not isinstance(value, str) else bytes.fromhex(value[2:])
        if len(raw) > _LONG_BYTES:
            return f"0x{raw[:32].hex()}… ({len(raw)} bytes)"
        return "0x" + raw.hex()
    return str(value)


def format_args(inputs: Sequence[Mapping[str, Any]], values: Sequence[Any]) -> str:
    """`name=value, …` for a decoded argument list (positional where a name is missing)."""
    parts = []
    for index, (abi_input, value) in enumerate(zip(inputs, values, strict=False)):
        name = abi_input.get("name") or f"arg{index}"
        parts.append(f"{name}={display_value(abi_input, value)}")
    return ", ".join(parts)


class RevertDecoder:
    """Maps revert data to text, knowing every custom error of our compiled contracts."""

    def __init__(self, abis: Mapping[str, Iterable[Mapping[str, Any]]] | None = None) -> None:
        self._by_selector: dict[bytes, list[ErrorSpec]] = {}
        for contract, abi in (abis if abis is not None else artifact_abis()).items():
            for item in abi:
                if item.get("type") != "error":
                    continue
                spec = ErrorSpec(contract, str(item["name"]), tuple(item.get("inputs", [])))
                known = self._by_selector.setdefault(spec.selector, [])
                known.append(spec)

    def candidates(self, selector: bytes) -> list[ErrorSpec]:
        """Every contract error with this selector (several contracts share NotOwner etc.)."""
        return list(self._by_selector.get(selector, []))

    def decode(self, data: bytes | str | None, contract: str | None = None) -> str:
        """Readable text for raw revert data; `contract` picks among errors with one selector."""
        raw = _as_bytes(data)
        if raw is None or len(raw) == 0:
            return "reverted without a reason"
        selector, body = raw[:4], raw[4:]
        if selector == ERROR_STRING_SELECTOR:
            try:
                (message,) = abi_decode(["string"], body)
            except (DecodingError, ValueError):
                return f"reverted with a malformed Error(string): 0x{raw.hex()}"
            return f"Error({json.dumps(message, ensure_ascii=False)})"
        if selector == PANIC_SELECTOR:
            try:
                (code,) = abi_decode(["uint256"], body)
            except (DecodingError, ValueError):
                return f"reverted with a malformed Panic(uint256): 0x{raw.hex()}"
            meaning = PANIC_CODES.get(int(code), "unknown panic code")
            return f"Panic(0x{int(code):02x}): {meaning}"
        return self._decode_custom(selector, body, raw, contract)

    def _decode_custom(self, selector: bytes, body: bytes, raw: bytes, contract: str | None) -> str:
        specs = self.candidates(selector)
        if not specs:
            return f"reverted with unknown error 0x{selector.hex()} ({len(raw)} bytes of data)"
        preferred = [s for s in specs if s.contract == contract]
        spec = (preferred or specs)[0]
        try:
            values = abi_decode([collapse_if_tuple(i) for i in spec.inputs], body)
        except (DecodingError, ValueError):
            return f"{spec.contract}.{spec.name} with undecodable arguments: 0x{raw.hex()}"
        text = f"{spec.name}({format_args(spec.inputs, values)})"
        owners = sorted({s.contract for s in specs})
        if preferred or len(owners) == 1:
            return f"{spec.contract}.{text}"
        return f"{text} [declared by {', '.join(owners)}]"

    def from_exception(self, exc: BaseException, contract: str | None = None) -> str | None:
        """The reason inside a web3 revert exception, or None when it is not a revert."""
        if isinstance(exc, OffchainLookup):
            return "the contract asked for an off-chain lookup (EIP-3668), which we do not do"
        if isinstance(exc, ContractLogicError):  # also ContractCustomError, ContractPanicError
            data = exc.data if isinstance(exc.data, str) else None
            if data and _as_bytes(data):
                return self.decode(data, contract)
            message = str(exc.message or "").strip()
            if message and message != "execution reverted":
                return message.removeprefix("execution reverted: ")
            return "reverted without a reason"
        if isinstance(exc, Web3RPCError):
            data = revert_data_of_rpc_error(exc)
            if data is not None:
                return self.decode(data, contract)
        return None


def revert_data_of_rpc_error(exc: Web3RPCError) -> str | None:
    """The `data` hex of a JSON-RPC error that carries revert data (nodes differ in where)."""
    response = exc.rpc_response or {}
    error = response.get("error")
    if not isinstance(error, Mapping):
        return None
    data = error.get("data")
    if isinstance(data, Mapping):
        data = data.get("data") or data.get("result")
    if isinstance(data, str) and data.startswith("0x") and _as_bytes(data) is not None:
        return data
    return None


def rpc_error_message(exc: BaseException) -> str:
    """The node's own words from a JSON-RPC error (web3 wraps them in a dict repr)."""
    if isinstance(exc, Web3RPCError):
        error = (exc.rpc_response or {}).get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        return str(exc.message)
    return str(exc)


def _as_bytes(data: bytes | str | None) -> bytes | None:
    """Hex or bytes to bytes; None for anything that is not hex."""
    if data is None:
        return None
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    text = data.removeprefix("0x")
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


@functools.cache
def artifact_abis() -> dict[str, tuple[dict[str, Any], ...]]:
    """Every artifact's ABI once per process; a half-written artifact is skipped, not fatal."""
    abis: dict[str, tuple[dict[str, Any], ...]] = {}
    for name in artifact_names():
        try:
            abis[name] = tuple(load_artifact(name).abi)
        except ArtifactError:
            continue
    return abis


@functools.cache
def default_decoder() -> RevertDecoder:
    """One decoder over all shipped artifacts, shared by the whole node."""
    return RevertDecoder()
