"""Looking a model up in the DHT: its key, the providers (merged per peer: libp2p 0.8.1's
find_providers returns duplicates) and what each one offers, from its signed info record or,
failing that, from its answer on the info protocol. Shared by the node and the client.

Keys. DESIGN §11.2 names a model's DHT key `"model:" + hex(id)` and §5 says a node provides
sha256 of it. We provide under the sha2-256 *multihash* of `"model:" + hex(id)` (0x12 0x20 +
digest, 34 bytes), calling the provider store with those bytes ourselves: `KadDHT.provide(str)`
would try the string as a CID, then as hex, then as UTF-8, and a raw 70-byte key would be refused
by every remote FIND_NODE handler (0.8.1 ignores keys that are neither a multihash nor <= 50
bytes), leaving lookups to the local routing table. KadDHT then places the key at SHA-256(key)
in the XOR keyspace (routing_table.find_local_closest_peers, utils.sort_peer_ids_by_distance).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from fabstir_tui.engine.p2p.info_record import InfoRecordError, info_record_key, verify_info_record
from fabstir_tui.engine.p2p.messages import InfoResponse
from fabstir_tui.engine.p2p.peer_probe import ProbeError, query_peer_info

if TYPE_CHECKING:
    from libp2p.abc import IHost
    from libp2p.kad_dht.kad_dht import KadDHT
    from libp2p.peer.peerinfo import PeerInfo

_log = logging.getLogger(__name__)

_MODEL_ID = re.compile(r"[0-9a-f]{64}")
_SHA2_256_MULTIHASH = bytes([0x12, 0x20])  # multihash code and length of a sha2-256 digest
LOOKUP_QUERY_TIMEOUT_S = 10.0
MAX_PROVIDERS = 20


def normalize_model_id(model_id: str) -> str:
    """64 lowercase hex digits from a model id with or without 0x; ValueError otherwise."""
    hex_id = model_id.strip().lower().removeprefix("0x")
    if not _MODEL_ID.fullmatch(hex_id):
        raise ValueError(f"{model_id!r} is not a model id (64 hex digits, the GGUF's SHA-256)")
    return hex_id


def model_key(model_id: str) -> bytes:
    """The provider-record key of a model: the sha2-256 multihash of `model:` + its hex id."""
    digest = hashlib.sha256(b"model:" + normalize_model_id(model_id).encode()).digest()
    return _SHA2_256_MULTIHASH + digest


def dedup_providers(providers: Sequence[PeerInfo]) -> list[tuple[str, tuple[str, ...]]]:
    """(peer id, addrs) once per peer, addresses merged in first-seen order."""
    merged: dict[str, list[str]] = {}
    for provider in providers:
        addrs = merged.setdefault(str(provider.peer_id), [])
        for addr in provider.addrs:
            text = str(addr)
            if text not in addrs:
                addrs.append(text)
    return [(peer, tuple(addrs)) for peer, addrs in merged.items()]


@dataclass(frozen=True, slots=True)
class HostFound:
    """A host that provides a model: where to dial it and what it says it offers.

    `source` is "record" (the signed DHT record), "query" (asked over the info protocol) or
    "none" (neither answered; the info is unknown)."""

    peer_id: str
    addrs: tuple[str, ...]
    info: InfoResponse | None
    source: str


def lists_model(info: InfoResponse, model_id: str) -> bool:
    """True when the info offers the model (ids compared as bare lowercase hex)."""
    hex_id = normalize_model_id(model_id)
    return any(m.id.lower().removeprefix("0x") == hex_id for m in info.models)


async def lookup_model(
    dht: KadDHT,
    host: IHost,
    model_id: str,
    *,
    query_timeout_s: float = LOOKUP_QUERY_TIMEOUT_S,
    include_withdrawn: bool = False,
) -> list[HostFound]:
    """Trio side: the hosts providing `model_id`, once each, with their signed info record,
    or their info answer when the record is missing or does not list the model.

    Provider records cannot be withdrawn (they expire after a day), so a host whose current
    info no longer lists the model is left out unless `include_withdrawn`."""
    found = await dht.provider_store.find_providers(model_key(model_id), MAX_PROVIDERS)
    providers = dedup_providers(found)
    results: dict[str, HostFound] = {}

    async def describe(peer: str, addrs: tuple[str, ...]) -> None:
        with trio.move_on_after(query_timeout_s):
            results[peer] = await _describe(dht, host, peer, addrs, model_id)
        if peer not in results:
            results[peer] = HostFound(peer, addrs, None, "none")

    async with trio.open_nursery() as nursery:
        for peer, addrs in providers:
            nursery.start_soon(describe, peer, addrs)
    hosts = [results[peer] for peer, _ in providers]
    if include_withdrawn:
        return hosts
    return [h for h in hosts if h.info is None or lists_model(h.info, model_id)]


async def _describe(
    dht: KadDHT, host: IHost, peer: str, addrs: tuple[str, ...], model_id: str
) -> HostFound:
    """The signed record when it lists the model; else the host's own answer; else what the
    record says (the host is unreachable); else nothing known."""
    try:
        value = await dht.get_value(info_record_key(peer))
    except Exception as exc:  # a lookup failing is the same as no record
        _log.debug("no info record of %s: %s", peer, exc)
        value = None
    from_record: HostFound | None = None
    if value is not None:
        try:
            record = verify_info_record(value, peer)
        except InfoRecordError as exc:
            _log.debug("refused the info record of %s: %s", peer, exc)
        else:
            merged = addrs + tuple(a for a in record.addrs if a not in addrs)
            from_record = HostFound(peer, merged, record.info, "record")
            if lists_model(record.info, model_id):
                return from_record
    info = await _ask_info(host, peer)
    if info is not None:
        return HostFound(peer, from_record.addrs if from_record else addrs, info, "query")
    return from_record or HostFound(peer, addrs, None, "none")


async def _ask_info(host: IHost, peer: str) -> InfoResponse | None:
    """The peer's answer on the info protocol, or None when it cannot give one."""
    from libp2p.peer.id import ID

    try:
        return await query_peer_info(host, ID.from_base58(peer), LOOKUP_QUERY_TIMEOUT_S)
    except ProbeError as exc:  # unreachable, refused or malformed: the caller reports "none"
        _log.debug("info query to %s failed: %s", peer, exc)
        return None
