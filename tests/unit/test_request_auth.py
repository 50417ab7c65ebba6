"""DESIGN §11.6 request authentication: real EIP-712 signatures (eth_account), real SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from fabstir_tui.engine.p2p.request_auth import (
    AuthDomain,
    AuthReason,
    AuthRefused,
    NonceBook,
    RequestVerifier,
    SignedJobRequest,
    auth_from_header,
    authorization_header,
    parse_auth,
    prompt_hash,
    sign_request,
)
from fabstir_tui.engine.store import Store

HOST = "0x" + "ab" * 20
MARKET = "0x" + "4d" * 20
DOMAIN = AuthDomain(chain_id=31337, verifying_contract=MARKET)
NOW = 1_800_000_000
CLIENT = Account.from_key("0x" + "11" * 32)


def _signed(**changes: Any) -> SignedJobRequest:
    fields: dict[str, Any] = {
        "host": HOST,
        "prompt": "hello",
        "nonce": 1,
        "expiry": NOW + 60,
        "job_id": 7,
    }
    domain = changes.pop("domain", DOMAIN)
    fields.update(changes)
    return sign_request(CLIENT.key, domain, **fields)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "node.db")
    yield s
    s.close()


def _verify(verifier: RequestVerifier, auth: Any, **changes: Any) -> str:
    args: dict[str, Any] = {
        "host_address": HOST,
        "prompt": "hello",
        "job_id": "7",
        "session_id": None,
        "now": NOW,
    }
    args.update(changes)
    return verifier.verify(auth, **args)


def _reason(verifier: RequestVerifier, auth: Any, **changes: Any) -> str:
    with pytest.raises(AuthRefused) as caught:
        _verify(verifier, auth, **changes)
    assert str(caught.value)  # every refusal says why in words
    return caught.value.reason


def test_prompt_hash_is_keccak256_of_utf8() -> None:
    # keccak256("") is a well-known constant; UTF-8 matters for non-ASCII prompts.
    empty = "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert prompt_hash("") == empty
    assert prompt_hash("é") != prompt_hash("e")


def test_sign_verify_round_trip_through_the_wire_form(store: Store) -> None:
    verifier = RequestVerifier(DOMAIN, NonceBook(store))
    signed = _signed()
    assert parse_auth(signed.to_wire()) == signed
    assert _verify(verifier, signed.to_wire()) == CLIENT.address
    session = _signed(job_id=0, session_id=3, nonce=2)
    assert _verify(verifier, session.to_wire(), job_id=None, session_id="3") == CLIENT.address


def test_each_refusal_has_its_reason(store: Store) -> None:
    verifier = RequestVerifier(DOMAIN, NonceBook(store))
    good = _signed().to_wire()
    other = Account.from_key("0x" + "22" * 32).address
    tampered = {**good, "nonce": "99"}  # signed for nonce 1
    assert _reason(verifier, tampered) == AuthReason.BAD_SIGNATURE
    assert _reason(verifier, {**good, "signer": other}) == AuthReason.BAD_SIGNATURE
    zeros = {**good, "signature": "0x" + "00" * 65}
    assert _reason(verifier, zeros) == AuthReason.BAD_SIGNATURE
    chain_b = _signed(domain=AuthDomain(chain_id=84532, verifying_contract=MARKET)).to_wire()
    assert _reason(verifier, chain_b) == AuthReason.BAD_SIGNATURE  # another chain's domain
    assert _reason(verifier, good, now=NOW + 61) == AuthReason.EXPIRED
    assert _reason(verifier, _signed(expiry=NOW + 601).to_wire()) == AuthReason.EXPIRY_TOO_FAR
    assert _reason(verifier, good, host_address=other) == AuthReason.WRONG_HOST
    assert _reason(verifier, good, host_address="") == AuthReason.WRONG_HOST
    assert _reason(verifier, good, prompt="hello!") == AuthReason.PROMPT_MISMATCH
    assert _reason(verifier, good, job_id="8") == AuthReason.WRONG_REQUEST
    assert _reason(verifier, good, job_id=None, session_id="7") == AuthReason.WRONG_REQUEST
    assert _reason(verifier, good, job_id="job-7") == AuthReason.WRONG_REQUEST
    for junk in ("x", [], {**good, "jobId": "0"}, {**good, "host": "0x12"}, {**good, "nonce": -1}):
        assert _reason(verifier, junk) == AuthReason.MALFORMED
    # None of the refusals spent the nonce: the good request still passes, once.
    assert _verify(verifier, good) == CLIENT.address
    assert _reason(verifier, good) == AuthReason.NONCE_REUSED


def test_expected_signer_is_the_chain_check_hook(store: Store) -> None:
    seen: list[int] = []

    def poster(request: SignedJobRequest) -> str | None:
        seen.append(request.job_id)
        return CLIENT.address if request.job_id == 7 else None

    verifier = RequestVerifier(DOMAIN, NonceBook(store), expected_signer=poster)
    assert _verify(verifier, _signed().to_wire()) == CLIENT.address
    nine = _signed(job_id=9, nonce=5).to_wire()
    assert _reason(verifier, nine, job_id="9") == AuthReason.WRONG_SIGNER
    assert seen == [7, 9]


def test_used_nonces_survive_a_store_reopen_and_expired_ones_are_swept(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    first = Store(path)
    try:
        assert _verify(RequestVerifier(DOMAIN, NonceBook(first)), _signed().to_wire())
    finally:
        first.close()
    again = Store(path)
    try:
        book = NonceBook(again)
        verifier = RequestVerifier(DOMAIN, book)
        assert _reason(verifier, _signed().to_wire()) == AuthReason.NONCE_REUSED
        assert book.use(CLIENT.address, 2, NOW + 600)
        assert book.sweep(now=NOW + 61) == 1  # nonce 1 expired at NOW + 60; nonce 2 stays
        assert not book.use(CLIENT.address, 2, NOW + 600)
        assert book.use(CLIENT.address, 1, NOW + 600)
    finally:
        again.close()


def test_unset_contract_leaves_it_out_of_the_domain() -> None:
    fields, values = AuthDomain(chain_id=5).as_eip712()
    assert [f["name"] for f in fields] == ["name", "version", "chainId"]
    assert values == {"name": "Fabstir", "version": "1", "chainId": 5}


def test_http_header_form_carries_the_same_object(store: Store) -> None:
    signed = _signed(nonce=11)
    header = authorization_header(signed)
    assert header.startswith("Fabstir ") and "=" not in header and "+" not in header
    assert auth_from_header(header) == signed.to_wire()
    verifier = RequestVerifier(DOMAIN, NonceBook(store))
    assert _verify(verifier, auth_from_header(header)) == CLIENT.address
    for junk in ("Bearer abc", "Fabstir", "Fabstir !!!", "Fabstir " + "W10"):  # W10 = "[]"
        with pytest.raises(AuthRefused) as caught:
            auth_from_header(junk)
        assert caught.value.reason == AuthReason.MALFORMED
