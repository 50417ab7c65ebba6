"""Receipts: EIP-712 signing with real eth_account keys, hashes checked by hand, wire form."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_account import Account
from eth_utils.crypto import keccak

from fabstir_tui.engine.p2p.request_auth import AuthDomain, prompt_hash
from fabstir_tui.engine.proofs.receipt import (
    RECEIPT_TYPE,
    ZERO_HASH,
    Receipt,
    ReceiptError,
    SignedReceipt,
    build_receipt,
    output_hash,
    parse_receipt,
    receipt_hash,
    runtime_hash,
    sign_receipt,
    verify_receipt,
)

HOST_KEY = "0x" + "11" * 32
OTHER_KEY = "0x" + "22" * 32
MARKETPLACE = "0x" + "ab" * 20
DOMAIN = AuthDomain(chain_id=31337, verifying_contract=MARKETPLACE)
RUNTIME = {
    "llama_cpp_version": "b4589",
    "backend": "cpu",
    "threads": 4,
    "batch_size": 512,
    "n_ctx": 2048,
    "temperature": 0.0,
    "top_k": 40,
    "top_p": 0.95,
    "seed": 42,
}
MODEL_SHA = "ab" * 32


def make_receipt(**overrides: object) -> Receipt:
    values: dict[str, object] = {
        "model_sha256": MODEL_SHA,
        "runtime": RUNTIME,
        "prompt": "Say hi",
        "output": "Hi there ✓",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "job_id": 7,
    }
    values.update(overrides)
    return build_receipt(**values)  # type: ignore[arg-type]


def hand_digest(receipt: Receipt, domain: AuthDomain) -> bytes:
    """EIP-712 digest written out from the spec with eth_abi, independent of eth_account."""
    type_string = "Receipt(" + ",".join(f"{f['type']} {f['name']}" for f in RECEIPT_TYPE) + ")"
    values = receipt.message()
    struct_hash = keccak(
        keccak(type_string.encode())
        + encode([f["type"] for f in RECEIPT_TYPE], [values[f["name"]] for f in RECEIPT_TYPE])
    )
    domain_type = (
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    separator = keccak(
        keccak(domain_type.encode())
        + encode(
            ["bytes32", "bytes32", "uint256", "address"],
            [keccak(b"Fabstir"), keccak(b"1"), domain.chain_id, domain.verifying_contract],
        )
    )
    return keccak(b"\x19\x01" + separator + struct_hash)


def test_hashes_follow_the_stated_rules() -> None:
    receipt = make_receipt()
    assert receipt.model_hash == "0x" + MODEL_SHA
    assert receipt.prompt_hash == prompt_hash("Say hi") == "0x" + keccak(b"Say hi").hex()
    assert receipt.output_hash == "0x" + keccak("Hi there ✓".encode()).hex()
    assert output_hash("") == "0x" + keccak(b"").hex()
    canonical = (
        '{"backend":"cpu","batch_size":512,"llama_cpp_version":"b4589","n_ctx":2048,'
        '"seed":42,"temperature":0.0,"threads":4,"top_k":40,"top_p":0.95}'
    )
    assert receipt.runtime_hash == "0x" + keccak(canonical.encode()).hex()
    assert receipt.prev_receipt_hash == ZERO_HASH


def test_runtime_hash_is_order_free_but_value_sensitive() -> None:
    reordered = dict(reversed(list(RUNTIME.items())))
    assert runtime_hash(reordered) == runtime_hash(RUNTIME)
    assert runtime_hash({**RUNTIME, "seed": 43}) != runtime_hash(RUNTIME)
    assert runtime_hash({**RUNTIME, "min_p": 0.05}) != runtime_hash(RUNTIME)
    with pytest.raises(ValueError, match="lack seed"):
        runtime_hash({k: v for k, v in RUNTIME.items() if k != "seed"})
    with pytest.raises(ValueError, match="finite"):
        runtime_hash({**RUNTIME, "temperature": float("nan")})
    with pytest.raises(ValueError, match="scalar"):
        runtime_hash({**RUNTIME, "backend": ["cpu"]})


def test_receipt_hash_matches_a_hand_built_eip712_digest() -> None:
    receipt = make_receipt(prev_receipt_hash="0x" + "cd" * 32)
    assert receipt_hash(receipt, DOMAIN) == hand_digest(receipt, DOMAIN)


def test_sign_verify_round_trip_recovers_the_host() -> None:
    signed = sign_receipt(HOST_KEY, DOMAIN, make_receipt())
    host = Account.from_key(HOST_KEY).address
    assert signed.signer == host
    assert verify_receipt(signed, DOMAIN) == host
    assert verify_receipt(signed, DOMAIN, expected_signer=host.lower()) == host
    with pytest.raises(ReceiptError) as refused:
        verify_receipt(signed, DOMAIN, expected_signer=Account.from_key(OTHER_KEY).address)
    assert refused.value.field == "signer"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", 8),
        ("model_hash", "0x" + "ac" * 32),
        ("runtime_hash", runtime_hash({**RUNTIME, "threads": 8})),
        ("prompt_hash", prompt_hash("Say hi!")),
        ("output_hash", output_hash("Hi there")),
        ("prompt_tokens", 4),
        ("completion_tokens", 5),
        ("prev_receipt_hash", "0x" + "01" * 32),
    ],
)
def test_tampering_any_field_changes_the_hash_and_breaks_the_signature(
    field: str, value: Any
) -> None:
    signed = sign_receipt(HOST_KEY, DOMAIN, make_receipt())
    tampered = SignedReceipt(
        dataclasses.replace(signed.receipt, **{field: value}), signed.signer, signed.signature
    )
    assert receipt_hash(tampered.receipt, DOMAIN) != receipt_hash(signed.receipt, DOMAIN)
    with pytest.raises(ReceiptError) as refused:
        verify_receipt(tampered, DOMAIN)
    assert refused.value.field == "signature"


def test_session_receipt_and_other_domain() -> None:
    signed = sign_receipt(HOST_KEY, DOMAIN, make_receipt(job_id=0, session_id=3))
    assert verify_receipt(signed, DOMAIN) == signed.signer
    other_chain = AuthDomain(chain_id=1, verifying_contract=DOMAIN.verifying_contract)
    assert receipt_hash(signed.receipt, other_chain) != receipt_hash(signed.receipt, DOMAIN)
    with pytest.raises(ReceiptError, match="signature"):
        verify_receipt(signed, other_chain)
    no_contract = AuthDomain(chain_id=31337)
    assert receipt_hash(signed.receipt, no_contract) != receipt_hash(signed.receipt, DOMAIN)


def test_exactly_one_id_and_ranges_are_enforced() -> None:
    with pytest.raises(ReceiptError, match="exactly one"):
        make_receipt(job_id=0)
    with pytest.raises(ReceiptError, match="exactly one"):
        make_receipt(job_id=1, session_id=1)
    with pytest.raises(ReceiptError) as refused:
        make_receipt(prompt_tokens=-1)
    assert refused.value.field == "promptTokens"
    with pytest.raises(ReceiptError) as refused:
        make_receipt(model_sha256="abc")
    assert refused.value.field == "modelHash"


def test_receipts_chain_through_prev_receipt_hash() -> None:
    chain: list[SignedReceipt] = []
    prev = ZERO_HASH
    for turn in range(3):
        receipt = make_receipt(
            job_id=0, session_id=9, output=f"turn {turn}", prev_receipt_hash=prev
        )
        chain.append(sign_receipt(HOST_KEY, DOMAIN, receipt))
        prev = "0x" + receipt_hash(receipt, DOMAIN).hex()
    assert chain[0].receipt.prev_receipt_hash == ZERO_HASH
    for earlier, later in itertools.pairwise(chain):
        link = receipt_hash(earlier.receipt, DOMAIN)
        assert later.receipt.prev_receipt_hash == "0x" + link.hex()
        assert verify_receipt(later, DOMAIN) == later.signer
    # Rewriting an earlier receipt's output breaks the link its successor committed to.
    forged = dataclasses.replace(chain[0].receipt, output_hash=output_hash("forged"))
    assert "0x" + receipt_hash(forged, DOMAIN).hex() != chain[1].receipt.prev_receipt_hash


def test_wire_form_round_trips_as_canonical_json() -> None:
    signed = sign_receipt(HOST_KEY, DOMAIN, make_receipt(prompt_tokens=2**255))
    text = signed.to_json()
    assert text == json.dumps(signed.to_wire(), sort_keys=True, separators=(",", ":")).encode()
    wire = json.loads(text)
    assert wire["promptTokens"] == str(2**255)
    assert wire["jobId"] == "7" and wire["sessionId"] == "0"
    parsed = parse_receipt(text)
    assert parsed == signed
    assert parse_receipt(text.decode()) == signed
    assert parse_receipt(wire) == signed
    assert verify_receipt(parsed, DOMAIN) == signed.signer


def _wire() -> dict[str, object]:
    return sign_receipt(HOST_KEY, DOMAIN, make_receipt()).to_wire()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("jobId", 7),
        ("jobId", "07"),
        ("sessionId", "-1"),
        ("promptTokens", str(2**256)),
        ("completionTokens", None),
        ("modelHash", "0x" + "AB" * 32),
        ("outputHash", "0x" + "ab" * 31),
        ("prevReceiptHash", "ab" * 32),
        ("signer", "0x1234"),
        ("signature", "0x" + "00" * 64),
    ],
)
def test_parser_names_the_bad_field(field: str, value: object) -> None:
    wire = _wire()
    wire[field] = value
    with pytest.raises(ReceiptError) as refused:
        parse_receipt(wire)
    assert refused.value.field == field
    assert repr(field) in str(refused.value)


def test_parser_refuses_missing_unknown_and_non_objects() -> None:
    wire = _wire()
    del wire["runtimeHash"]
    with pytest.raises(ReceiptError) as refused:
        parse_receipt(wire)
    assert refused.value.field == "runtimeHash"
    with pytest.raises(ReceiptError) as refused:
        parse_receipt({**_wire(), "extra": "1"})
    assert refused.value.field == "extra"
    for junk in (b"[1]", b"{not json", "null"):
        with pytest.raises(ReceiptError) as refused:
            parse_receipt(junk)
        assert refused.value.field == "<json>"
    with pytest.raises(ReceiptError, match="exactly one"):
        parse_receipt({**_wire(), "sessionId": "5"})


def test_junk_signature_is_refused_not_crashed() -> None:
    wire = _wire()
    wire["signature"] = "0x" + "ff" * 65
    with pytest.raises(ReceiptError) as refused:
        verify_receipt(parse_receipt(wire), DOMAIN)
    assert refused.value.field == "signature"
