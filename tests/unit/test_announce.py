"""Announcement documents: round trip, size cap, schema checks, signer check; the DHT key of a
model and provider de-duplication."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from fabstir_tui.engine.p2p.announce import (
    MAX_ANNOUNCE_BYTES,
    AnnouncementError,
    announcement_from_info,
    parse_announcement,
    signer_matches,
)
from fabstir_tui.engine.p2p.dht_lookup import dedup_providers, model_key, normalize_model_id
from fabstir_tui.engine.p2p.messages import MAX_MODELS, Capacity, InfoResponse, ModelOffer

TOKEN = "0x" + "ef" * 20


def info(models: int = 2) -> InfoResponse:
    offers = tuple(ModelOffer(f"{i:064x}", "n" * 300, 10**30 + i, TOKEN) for i in range(models))
    return InfoResponse(
        models=offers,
        capacity=Capacity(max_jobs=3, active_jobs=1, queued_jobs=2),
        api_url="",
        chain_address="",
        version="1",
    )


def test_an_announcement_round_trips() -> None:
    sent = announcement_from_info("12D3KooWpeer", info(), seq=4, at=123.5)
    got = parse_announcement(sent.encode())
    assert got == sent
    assert (got.max_jobs, got.active_jobs, got.queued_jobs) == (3, 1, 2)
    assert got.models[0].price_per_million == 10**30  # beyond float precision, kept exact
    assert len(got.models[0].name) == 64  # names are shortened for the wire


def test_a_large_announcement_is_trimmed_to_the_cap() -> None:
    data = announcement_from_info("p", info(MAX_MODELS), seq=1, at=1.0).encode()
    assert len(data) <= MAX_ANNOUNCE_BYTES
    assert 0 < len(parse_announcement(data).models) < MAX_MODELS
    with pytest.raises(AnnouncementError, match="exceeds"):
        parse_announcement(data + b" " * MAX_ANNOUNCE_BYTES)


def _doc(**change: Any) -> bytes:
    doc: dict[str, Any] = json.loads(announcement_from_info("p", info(), seq=1, at=1.0).encode())
    doc.update(change)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        _doc(v=2),
        _doc(peer=""),
        _doc(seq=-1),
        _doc(seq=True),
        _doc(time="now"),
        _doc(capacity=[1, 2]),
        _doc(capacity=[1, 2, -3]),
        _doc(models=[{"id": "x", "name": "n", "price": "1.5", "token": ""}]),
        _doc(models=[{"id": "", "name": "n", "price": "1", "token": ""}]),
        _doc(models=[{"id": "x", "name": 5, "price": "1", "token": ""}]),
        _doc(models="all"),
    ],
)
def test_malformed_announcements_are_refused(data: bytes) -> None:
    with pytest.raises(AnnouncementError):
        parse_announcement(data)


def test_the_signer_must_be_the_peer_named() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    me = ID.from_pubkey(create_new_key_pair().public_key)
    other = ID.from_pubkey(create_new_key_pair().public_key)
    mine = announcement_from_info(me.to_base58(), info(), seq=1, at=1.0)
    assert signer_matches(me.to_bytes(), mine)
    assert not signer_matches(other.to_bytes(), mine)
    assert not signer_matches(b"\x00garbage", mine)


def test_the_model_key_is_the_sha256_multihash_of_model_colon_hex_id() -> None:
    hex_id = "ab" * 32
    digest = hashlib.sha256(b"model:" + hex_id.encode()).digest()
    assert model_key("0x" + hex_id.upper()) == bytes([0x12, 0x20]) + digest
    assert normalize_model_id(" 0X" + hex_id + " ") == hex_id
    for bad in ("", "ab" * 31, "zz" * 32, "ab" * 33):
        with pytest.raises(ValueError):
            normalize_model_id(bad)


def test_duplicate_providers_are_merged_per_peer() -> None:
    import multiaddr
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo

    a = ID.from_pubkey(create_new_key_pair().public_key)
    b = ID.from_pubkey(create_new_key_pair().public_key)
    one, two = (
        multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/1"),
        multiaddr.Multiaddr("/ip4/10.0.0.1/tcp/2"),
    )
    found = [PeerInfo(a, [one]), PeerInfo(b, [two]), PeerInfo(a, [one, two]), PeerInfo(a, [])]
    assert dedup_providers(found) == [
        (a.to_base58(), (str(one), str(two))),
        (b.to_base58(), (str(two),)),
    ]
