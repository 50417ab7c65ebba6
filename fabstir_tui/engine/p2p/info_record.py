"""The node's signed info record in the DHT (DESIGN §5): what it serves, at what price, where.

A record is the node's InfoResponse plus its dialable addresses, a sequence number and a time,
signed with the node's libp2p key. Anyone can check it from the peer id alone (ed25519 peer ids
embed the public key), so a DHT peer cannot forge or alter another node's prices or addresses.
The `InfoRecordValidator` is registered with KadDHT for the `fabstir` namespace: every node
refuses unsigned, forged, misfiled or oversized records and keeps the newest (highest seq).

Key: `/fabstir/` + base64url(SHA-256(peer id bytes)[:24]), 41 bytes. A readable
`/fabstir/info/<peer id>` would be 66 bytes, and libp2p 0.8.1's FIND_NODE handler ignores keys
over 50 bytes that are not multihashes, which would confine puts and gets to the routing table.

Wire form (UTF-8 JSON): {"v": 1, "body": "<JSON text>", "sig": "<base64 signature>"}; the
signature covers SIGNING_PREFIX + body, so it can never be confused with another libp2p signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.p2p.frames import FrameError
from fabstir_tui.engine.p2p.messages import InfoResponse, parse_info

if TYPE_CHECKING:
    from libp2p.crypto.keys import PrivateKey, PublicKey

NAMESPACE = "fabstir"
KEY_PREFIX = f"/{NAMESPACE}/"
_KEY_DIGEST_BYTES = 24
RECORD_VERSION = 1
SIGNING_PREFIX = b"fabstir-info-record/1\n"
MAX_RECORD_BYTES = 64 * 1024
MAX_ADDRS = 16
MAX_ADDR_CHARS = 256
# A record dated further ahead than this is refused: it would win every select for too long.
MAX_CLOCK_SKEW_S = 600.0


class InfoRecordError(ValueError):
    """A record is malformed, unsigned, forged, misfiled or too large; the text says which."""


@dataclass(frozen=True, slots=True)
class InfoRecord:
    """A verified record: whose it is, how fresh, where to dial, and the info itself."""

    peer_id: str
    seq: int
    time: float
    addrs: tuple[str, ...]
    info: InfoResponse


def info_record_key(peer_id: str) -> str:
    """The DHT key a node files its info record under (short enough for FIND_NODE)."""
    digest = hashlib.sha256(peer_id.encode()).digest()[:_KEY_DIGEST_BYTES]
    return KEY_PREFIX + base64.urlsafe_b64encode(digest).decode()


def _body(peer_id: str, seq: int, at: float, addrs: Sequence[str], info: InfoResponse) -> str:
    frame = info.to_frame()
    document = {"peer": peer_id, "seq": seq, "time": at, "addrs": list(addrs), "info": frame}
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def sign_info_record(
    private_key: PrivateKey,
    peer_id: str,
    info: InfoResponse,
    addrs: Sequence[str],
    seq: int,
    at: float | None = None,
) -> bytes:
    """The signed record bytes; models are dropped from the end until it fits the size cap."""
    when = time.time() if at is None else at
    kept_addrs = [a for a in addrs if len(a) <= MAX_ADDR_CHARS][:MAX_ADDRS]
    models = list(info.models)
    while True:
        trimmed = InfoResponse(
            models=tuple(models),
            capacity=info.capacity,
            api_url=info.api_url,
            chain_address=info.chain_address,
            version=info.version,
            gpu=info.gpu,
            chain_id=info.chain_id,
        )
        body = _body(peer_id, seq, when, kept_addrs, trimmed)
        signature = private_key.sign(SIGNING_PREFIX + body.encode())
        envelope = {"v": RECORD_VERSION, "body": body, "sig": base64.b64encode(signature).decode()}
        value = json.dumps(envelope, separators=(",", ":")).encode()
        if len(value) <= MAX_RECORD_BYTES:
            return value
        if not models:
            raise InfoRecordError("the info record does not fit even without models")
        models.pop()


def _public_key(peer_id: str) -> PublicKey:
    from libp2p.peer.id import ID

    try:
        key = ID.from_base58(peer_id).extract_public_key()
    except Exception as exc:  # base58 and multihash raise several types
        raise InfoRecordError(f"{peer_id!r} is not a peer id: {exc}") from None
    if key is None:
        raise InfoRecordError(f"peer id {peer_id} does not embed its public key (not ed25519?)")
    return key


def _envelope(value: bytes) -> tuple[str, bytes]:
    if len(value) > MAX_RECORD_BYTES:
        raise InfoRecordError(f"record of {len(value)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        envelope = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InfoRecordError(f"record is not JSON: {exc}") from None
    if not isinstance(envelope, dict) or envelope.get("v") != RECORD_VERSION:
        raise InfoRecordError(f"record is not a version {RECORD_VERSION} envelope")
    body, sig = envelope.get("body"), envelope.get("sig")
    if not isinstance(body, str) or not isinstance(sig, str) or not sig:
        raise InfoRecordError("record lacks its body or signature")
    try:
        signature = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise InfoRecordError("record signature is not base64") from None
    return body, signature


def _fields(document: Any) -> tuple[str, int, float, tuple[str, ...], Any]:
    if not isinstance(document, dict):
        raise InfoRecordError("record body is not an object")
    peer, seq, at = document.get("peer"), document.get("seq"), document.get("time")
    addrs = document.get("addrs")
    if not isinstance(peer, str):
        raise InfoRecordError("record body lacks the peer id")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        raise InfoRecordError("record seq is not a non-negative integer")
    if not isinstance(at, int | float) or isinstance(at, bool) or at < 0:
        raise InfoRecordError("record time is not a number of seconds")
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS:
        raise InfoRecordError(f"record addrs is not a list of at most {MAX_ADDRS}")
    for addr in addrs:
        if not isinstance(addr, str) or not addr.startswith("/") or len(addr) > MAX_ADDR_CHARS:
            raise InfoRecordError(f"record address {addr!r} is not a multiaddr")
    return peer, seq, float(at), tuple(addrs), document.get("info")


def verify_info_record(
    value: bytes, expected_peer: str | None = None, *, now: float | None = None
) -> InfoRecord:
    """The record if its signature verifies against the peer id inside it (and that peer id
    is `expected_peer` when given); InfoRecordError otherwise."""
    body, signature = _envelope(value)
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InfoRecordError(f"record body is not JSON: {exc}") from None
    peer, seq, at, addrs, info_frame = _fields(document)
    if expected_peer is not None and peer != expected_peer:
        raise InfoRecordError(f"record of {peer} filed under {expected_peer}")
    key = _public_key(peer)
    try:
        valid = key.verify(SIGNING_PREFIX + body.encode(), signature)
    except Exception:  # a malformed signature raises instead of returning False
        valid = False
    if not valid:
        raise InfoRecordError(f"record signature does not verify for {peer}")
    current = time.time() if now is None else now
    if at > current + MAX_CLOCK_SKEW_S:
        raise InfoRecordError(f"record is dated {at - current:.0f} s in the future")
    try:
        info = parse_info(info_frame)
    except FrameError as exc:
        raise InfoRecordError(f"record info is invalid: {exc}") from None
    return InfoRecord(peer_id=peer, seq=seq, time=at, addrs=addrs, info=info)


def _verify_filed(key: str, value: bytes) -> InfoRecord:
    """The record if it verifies and `key` is its peer's key; InfoRecordError otherwise."""
    record = verify_info_record(value)
    if info_record_key(record.peer_id) != key:
        raise InfoRecordError(f"record of {record.peer_id} filed under {key!r}")
    return record


class InfoRecordValidator:
    """KadDHT validator for info record keys: signed by the key's peer, newest wins.

    Duck-typed like libp2p's `Validator` (NamespacedValidator only calls these two methods), so
    importing this module does not import libp2p."""

    def validate(self, key: str, value: bytes) -> None:
        """Raise InfoRecordError unless `value` is a record signed by the peer `key` is for."""
        _verify_filed(key, value)

    def select(self, key: str, values: list[bytes]) -> int:
        """Index of the newest valid record (highest seq, then time); the first on a tie."""
        best, best_rank = -1, (-1, -1.0)
        for index, value in enumerate(values):
            try:
                record = _verify_filed(key, value)
            except InfoRecordError:
                continue
            rank = (record.seq, record.time)
            if rank > best_rank:
                best, best_rank = index, rank
        if best < 0:
            raise InfoRecordError(f"no valid record among {len(values)} for {key}")
        return best
