"""The signed info record: a real ed25519 libp2p key signs, anyone verifies from the peer id;
tampering, forging, misfiling and oversize are refused; the validator keeps the newest."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from fabstir_tui.engine.p2p.info_record import (
    MAX_RECORD_BYTES,
    InfoRecordError,
    InfoRecordValidator,
    info_record_key,
    sign_info_record,
    verify_info_record,
)
from fabstir_tui.engine.p2p.messages import MAX_MODELS, Capacity, InfoResponse, ModelOffer

TOKEN = "0x" + "cd" * 20
ADDRS = ["/ip4/127.0.0.1/tcp/4001/p2p/x"]


def keypair() -> tuple[Any, str]:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    pair = create_new_key_pair()
    return pair.private_key, ID.from_pubkey(pair.public_key).to_base58()


def info(models: int = 2, price: int = 500) -> InfoResponse:
    offers = tuple(
        ModelOffer(f"{i:064x}", f"model {i}" + "x" * 200, price, TOKEN) for i in range(models)
    )
    return InfoResponse(
        models=offers,
        capacity=Capacity(max_jobs=1, active_jobs=0),
        api_url="http://127.0.0.1:8080",
        chain_address="",
        version="1.0",
    )


def test_a_signed_record_verifies_from_the_peer_id_alone() -> None:
    key, peer = keypair()
    value = sign_info_record(key, peer, info(), ADDRS, seq=7, at=1000.0)
    record = verify_info_record(value, peer, now=1000.0)
    assert (record.peer_id, record.seq, record.time, record.addrs) == (
        peer,
        7,
        1000.0,
        tuple(ADDRS),
    )
    assert record.info == info()
    InfoRecordValidator().validate(info_record_key(peer), value)


def _tamper(value: bytes, change: Any) -> bytes:
    envelope = json.loads(value)
    body = json.loads(envelope["body"])
    change(body)
    envelope["body"] = json.dumps(body, separators=(",", ":"), sort_keys=True)
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b["info"]["models"][0].update(price_per_million=1),
        lambda b: b.update(addrs=["/ip4/6.6.6.6/tcp/1"]),
        lambda b: b.update(seq=b["seq"] + 1),
    ],
    ids=["price", "addrs", "seq"],
)
def test_a_tampered_record_is_refused(change: Any) -> None:
    key, peer = keypair()
    value = _tamper(sign_info_record(key, peer, info(), ADDRS, seq=1), change)
    with pytest.raises(InfoRecordError, match="does not verify"):
        verify_info_record(value, peer)


def test_a_record_signed_by_another_key_is_refused() -> None:
    _key, victim = keypair()
    forger_key, _forger = keypair()
    value = sign_info_record(forger_key, victim, info(), ADDRS, seq=1)
    with pytest.raises(InfoRecordError, match="does not verify"):
        verify_info_record(value, victim)
    with pytest.raises(InfoRecordError):
        InfoRecordValidator().validate(info_record_key(victim), value)


def test_a_record_filed_under_another_peer_is_refused() -> None:
    key, peer = keypair()
    _other_key, other = keypair()
    value = sign_info_record(key, peer, info(), ADDRS, seq=1)
    with pytest.raises(InfoRecordError, match="filed under"):
        InfoRecordValidator().validate(info_record_key(other), value)
    with pytest.raises(InfoRecordError, match="filed under"):
        InfoRecordValidator().validate("/fabstir/" + peer, value)
    assert len(info_record_key(peer).encode()) <= 50  # FIND_NODE ignores longer plain keys


def test_unsigned_and_garbage_records_are_refused() -> None:
    key, peer = keypair()
    envelope = json.loads(sign_info_record(key, peer, info(), ADDRS, seq=1))
    unsigned = json.dumps({"v": 1, "body": envelope["body"]}).encode()
    bad_sig = json.dumps({**envelope, "sig": base64.b64encode(b"\0" * 64).decode()}).encode()
    for value in (unsigned, bad_sig, b"", b"\xff\xfe", b"[]", b'{"v": 2}'):
        with pytest.raises(InfoRecordError):
            verify_info_record(value, peer)


def test_an_oversized_record_is_refused_and_signing_trims_models_to_fit() -> None:
    key, peer = keypair()
    value = sign_info_record(key, peer, info(models=MAX_MODELS), ADDRS, seq=1)
    assert len(value) <= MAX_RECORD_BYTES
    kept = verify_info_record(value, peer).info.models
    assert 0 < len(kept) < MAX_MODELS  # trimmed from the end, still signed
    assert kept == info(models=MAX_MODELS).models[: len(kept)]
    padded = value[:-1] + b" " * (MAX_RECORD_BYTES - len(value) + 1) + value[-1:]
    assert json.loads(padded) == json.loads(value)  # the same record, one byte too big
    with pytest.raises(InfoRecordError, match="exceeds"):
        verify_info_record(padded, peer)


def test_a_record_from_the_far_future_is_refused() -> None:
    key, peer = keypair()
    value = sign_info_record(key, peer, info(), ADDRS, seq=1, at=10_000.0)
    with pytest.raises(InfoRecordError, match="future"):
        verify_info_record(value, peer, now=1_000.0)


def test_the_validator_selects_the_newest_valid_record() -> None:
    key, peer = keypair()
    forger_key, _ = keypair()
    old = sign_info_record(key, peer, info(price=1), ADDRS, seq=5)
    new = sign_info_record(key, peer, info(price=2), ADDRS, seq=9)
    forged = sign_info_record(forger_key, peer, info(price=3), ADDRS, seq=99)
    validator = InfoRecordValidator()
    k = info_record_key(peer)
    assert validator.select(k, [old, new]) == 1
    assert validator.select(k, [new, old]) == 0
    assert validator.select(k, [forged, old, new]) == 2  # a forged higher seq never wins
    assert validator.select(k, [new, new]) == 0
    with pytest.raises(InfoRecordError):
        validator.select(k, [forged])
