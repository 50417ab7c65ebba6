"""The host's signed receipt for a job or session checkpoint (DESIGN §6).

A receipt is a signed commitment with a challenge window, not a zero-knowledge proof: the
host signs, with its chain key, EIP-712 typed data ``Receipt(uint256 jobId, uint256
sessionId, bytes32 modelHash, bytes32 runtimeHash, bytes32 promptHash, bytes32 outputHash,
uint256 promptTokens, uint256 completionTokens, bytes32 prevReceiptHash)`` in the same domain
as signed requests (`AuthDomain`: "Fabstir", "1", chainId, JobMarketplace). A verifier who
re-runs the job can then prove the host lied, within the dispute window.

- modelHash: SHA-256 of the GGUF file (the model registry's hash).
- runtimeHash: keccak256 of the canonical JSON of the runtime and sampler settings
  (`runtime_hash`): what a re-execution must match to reproduce the output exactly.
- promptHash / outputHash: keccak256 of the UTF-8 bytes (as a contract's
  ``keccak256(bytes(s))``); promptHash is request_auth's `prompt_hash`.
- prevReceiptHash: the previous receipt's hash in this host's chain (zero for the first).

A receipt's own hash is its full EIP-712 digest ``keccak256(0x1901 ‖ domainSeparator ‖
hashStruct(receipt))`` — what the signature covers, what chains receipts and what the
Merkle root commits to (a contract recomputes it with ``_hashTypedDataV4``).

The wire form is canonical JSON (sorted keys, no spaces): bytes32 as 0x-hex, uint256 as
decimal strings, plus ``signer`` and ``signature``. `parse_receipt` is strict and names the
bad field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fabstir_tui.engine.p2p.request_auth import UINT256_MAX, AuthDomain, prompt_hash

ZERO_HASH: Final = "0x" + "00" * 32
_HEX32 = re.compile(r"0x[0-9a-f]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SIGNATURE = re.compile(r"0x[0-9a-f]{130}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,77}")

RECEIPT_TYPE: Final = (
    {"name": "jobId", "type": "uint256"},
    {"name": "sessionId", "type": "uint256"},
    {"name": "modelHash", "type": "bytes32"},
    {"name": "runtimeHash", "type": "bytes32"},
    {"name": "promptHash", "type": "bytes32"},
    {"name": "outputHash", "type": "bytes32"},
    {"name": "promptTokens", "type": "uint256"},
    {"name": "completionTokens", "type": "uint256"},
    {"name": "prevReceiptHash", "type": "bytes32"},
)
_UINT_FIELDS: Final = ("jobId", "sessionId", "promptTokens", "completionTokens")
_HASH_FIELDS: Final = ("modelHash", "runtimeHash", "promptHash", "outputHash", "prevReceiptHash")
WIRE_FIELDS: Final = frozenset(f["name"] for f in RECEIPT_TYPE) | {"signer", "signature"}

RUNTIME_FIELDS: Final = (
    "llama_cpp_version",
    "backend",
    "threads",
    "batch_size",
    "n_ctx",
    "temperature",
    "top_k",
    "top_p",
    "seed",
)
"""Settings every runtime description must name; others (min_p, repeat_penalty, …) may follow."""


class ReceiptError(ValueError):
    """A receipt that is malformed or whose signature does not hold; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"receipt field {field!r}: {message}")
        self.field = field


def output_hash(output: str) -> str:
    """keccak256 of the output's UTF-8 bytes, 0x-hex (same rule as the prompt hash)."""
    return prompt_hash(output)


def _canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def runtime_hash(settings: Mapping[str, Any]) -> str:
    """keccak256 of the canonical JSON of runtime + sampler settings (all RUNTIME_FIELDS
    required; values JSON scalars; keys sorted, no spaces, UTF-8, no NaN/inf)."""
    from eth_utils.crypto import keccak

    missing = [name for name in RUNTIME_FIELDS if name not in settings]
    if missing:
        raise ValueError(f"runtime settings lack {', '.join(missing)}")
    for key, value in settings.items():
        if not isinstance(key, str):
            raise ValueError(f"runtime setting name {key!r} is not a string")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ValueError(f"runtime setting {key!r} must be a JSON scalar")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"runtime setting {key!r} must be finite")
    return "0x" + keccak(_canonical_json(dict(settings))).hex()


@dataclass(frozen=True, slots=True)
class Receipt:
    """The signed struct's values: bytes32 as lower-case 0x-hex, uint256 as int."""

    job_id: int
    session_id: int
    model_hash: str
    runtime_hash: str
    prompt_hash: str
    output_hash: str
    prompt_tokens: int
    completion_tokens: int
    prev_receipt_hash: str = ZERO_HASH

    def fields(self) -> dict[str, Any]:
        """The struct keyed by its EIP-712 field names (Python values)."""
        return {
            "jobId": self.job_id,
            "sessionId": self.session_id,
            "modelHash": self.model_hash,
            "runtimeHash": self.runtime_hash,
            "promptHash": self.prompt_hash,
            "outputHash": self.output_hash,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "prevReceiptHash": self.prev_receipt_hash,
        }

    def message(self) -> dict[str, Any]:
        """The struct's values as EIP-712 encodes them (bytes32 as bytes)."""
        return {
            name: bytes.fromhex(value[2:]) if name in _HASH_FIELDS else value
            for name, value in self.fields().items()
        }


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """A receipt, the address that claims to have signed it, and the 65-byte signature."""

    receipt: Receipt
    signer: str
    signature: str

    def to_wire(self) -> dict[str, Any]:
        """The JSON object (uint256 as decimal strings) handed to the client and stored."""
        wire: dict[str, Any] = {
            name: str(value) if name in _UINT_FIELDS else value
            for name, value in self.receipt.fields().items()
        }
        wire["signer"] = self.signer
        wire["signature"] = self.signature
        return wire

    def to_json(self) -> bytes:
        """Canonical JSON bytes of the wire form (what the blob store keeps)."""
        return _canonical_json(self.to_wire())


def _validated(receipt: Receipt) -> Receipt:
    """The receipt if every field is in range, else ReceiptError naming the field."""
    for name, value in receipt.fields().items():
        if name in _UINT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ReceiptError(name, "expected an integer")
            if not 0 <= value <= UINT256_MAX:
                raise ReceiptError(name, "outside uint256")
        elif not isinstance(value, str) or not _HEX32.fullmatch(value):
            raise ReceiptError(name, "expected 0x + 32 bytes of lower-case hex")
    if (receipt.job_id == 0) == (receipt.session_id == 0):
        raise ReceiptError("jobId", "exactly one of jobId/sessionId must be non-zero")
    return receipt


def build_receipt(
    *,
    model_sha256: str,
    runtime: Mapping[str, Any],
    prompt: str,
    output: str,
    prompt_tokens: int,
    completion_tokens: int,
    job_id: int = 0,
    session_id: int = 0,
    prev_receipt_hash: str = ZERO_HASH,
) -> Receipt:
    """The receipt for one run; `model_sha256` as the registry keeps it (hex, 0x optional)."""
    model = model_sha256.lower()
    return _validated(
        Receipt(
            job_id=job_id,
            session_id=session_id,
            model_hash=model if model.startswith("0x") else "0x" + model,
            runtime_hash=runtime_hash(runtime),
            prompt_hash=prompt_hash(prompt),
            output_hash=output_hash(output),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            prev_receipt_hash=prev_receipt_hash.lower(),
        )
    )


def _typed_data(domain: AuthDomain, receipt: Receipt) -> Any:
    return domain.typed_data("Receipt", RECEIPT_TYPE, receipt.message())


def receipt_hash(receipt: Receipt, domain: AuthDomain) -> bytes:
    """The receipt's EIP-712 digest (32 bytes): its identity, chain link and Merkle leaf."""
    from eth_utils.crypto import keccak

    signable = _typed_data(domain, _validated(receipt))
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign_receipt(private_key: bytes | str, domain: AuthDomain, receipt: Receipt) -> SignedReceipt:
    """Sign with the host's chain key."""
    from eth_account import Account

    account = Account.from_key(private_key)
    signed = account.sign_message(_typed_data(domain, _validated(receipt)))
    return SignedReceipt(receipt, account.address, "0x" + bytes(signed.signature).hex())


def verify_receipt(
    signed: SignedReceipt, domain: AuthDomain, *, expected_signer: str | None = None
) -> str:
    """The checksummed signer when the signature holds (and is `expected_signer`'s, if given),
    else ReceiptError naming ``signature`` or ``signer``."""
    from eth_account import Account

    try:
        recovered: str = Account.recover_message(
            _typed_data(domain, _validated(signed.receipt)),
            signature=bytes.fromhex(signed.signature[2:]),
        )
    except ReceiptError:
        raise
    except Exception as exc:  # eth_keys raises several types for a junk signature
        raise ReceiptError("signature", f"unreadable signature: {exc}") from None
    if recovered.lower() != signed.signer.lower():
        raise ReceiptError("signature", f"not {signed.signer}'s signature over this receipt")
    if expected_signer is not None and recovered.lower() != expected_signer.lower():
        raise ReceiptError("signer", f"signed by {recovered}, expected {expected_signer}")
    return recovered


def _wire_uint(obj: Mapping[str, Any], name: str) -> int:
    value = obj.get(name)
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise ReceiptError(name, "expected a uint256 as a decimal string")
    number = int(value)
    if number > UINT256_MAX:
        raise ReceiptError(name, "outside uint256")
    return number


def _wire_match(obj: Mapping[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ReceiptError(name, f"expected {what}")
    return value


def parse_receipt(data: bytes | str | Mapping[str, Any]) -> SignedReceipt:
    """A wire-form receipt (JSON text or decoded object) parsed strictly: unknown or missing
    fields, wrong types and bad hex are refused with ReceiptError naming the field. The
    signature is not checked here: call `verify_receipt`."""
    if isinstance(data, bytes | str):
        try:
            obj: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ReceiptError("<json>", f"not JSON: {exc}") from None
    else:
        obj = data
    if not isinstance(obj, Mapping):
        raise ReceiptError("<json>", "a receipt must be a JSON object")
    unknown = sorted(str(key) for key in obj if key not in WIRE_FIELDS)
    if unknown:
        raise ReceiptError(unknown[0], "unknown field")
    hashes = {
        name: _wire_match(obj, name, _HEX32, "0x + 32 bytes of lower-case hex")
        for name in _HASH_FIELDS
    }
    receipt = Receipt(
        job_id=_wire_uint(obj, "jobId"),
        session_id=_wire_uint(obj, "sessionId"),
        model_hash=hashes["modelHash"],
        runtime_hash=hashes["runtimeHash"],
        prompt_hash=hashes["promptHash"],
        output_hash=hashes["outputHash"],
        prompt_tokens=_wire_uint(obj, "promptTokens"),
        completion_tokens=_wire_uint(obj, "completionTokens"),
        prev_receipt_hash=hashes["prevReceiptHash"],
    )
    return SignedReceipt(
        receipt=_validated(receipt),
        signer=_wire_match(obj, "signer", _ADDRESS, "a 0x 20-byte hex address"),
        signature=_wire_match(obj, "signature", _SIGNATURE, "0x + 65 bytes of lower-case hex"),
    )
