"""Price and capacity announcements over GossipSub (DESIGN §5), topic `/fabstir/announce/1`.

Each node publishes a small JSON document (peer id, models with prices, capacity, seq, time)
every `announce_interval_s` and when it changes, never more than once a second: the library's
spam guard silently drops more than 10 messages/s per peer per topic (FIELD-NOTES). Incoming
messages are checked (size, schema, the signer is the peer the document names, seq only moves
forward) before the `on_announcement(peer_id, Announcement)` callback sees them; it runs on the
trio side, synchronously (the peer book's entry point is). Pubsub and GossipSub are services
that must run in the nursery (libp2p 0.8.1).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from fabstir_tui.engine.p2p.messages import MAX_ID_CHARS, MAX_MODELS, InfoResponse

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from fabstir_tui.engine.events import LogLevel
    from fabstir_tui.engine.p2p.bridge import TrioBridge

_log = logging.getLogger(__name__)

TOPIC = "/fabstir/announce/1"
ANNOUNCE_VERSION = 1
MAX_ANNOUNCE_BYTES = 32 * 1024
MAX_NAME_CHARS = 64
MIN_PUBLISH_GAP_S = 1.0
CHANGE_POLL_S = 1.0
_MAX_COUNT = 1 << 30


class AnnouncementError(ValueError):
    """An announcement is malformed or too large; the text says why."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One served model, its (shortened) name and its price per million tokens of `price_token`."""

    id: str
    name: str
    price_per_million: int
    price_token: str


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a node tells the network every interval: what it serves, at what price, how busy."""

    peer_id: str
    models: tuple[ModelPrice, ...]
    max_jobs: int
    active_jobs: int
    queued_jobs: int
    seq: int
    time: float

    def content(self) -> tuple[Any, ...]:
        """What decides whether a new announcement is needed (seq and time excluded)."""
        return (self.models, self.max_jobs, self.active_jobs, self.queued_jobs)

    def encode(self) -> bytes:
        """Compact JSON, models dropped from the end until it fits MAX_ANNOUNCE_BYTES."""
        models = list(self.models)
        while True:
            document = {
                "v": ANNOUNCE_VERSION,
                "peer": self.peer_id,
                "seq": self.seq,
                "time": self.time,
                "models": [
                    {
                        "id": m.id,
                        "name": m.name,
                        "price": str(m.price_per_million),
                        "token": m.price_token,
                    }
                    for m in models
                ],
                "capacity": [self.max_jobs, self.active_jobs, self.queued_jobs],
            }
            data = json.dumps(document, separators=(",", ":")).encode()
            if len(data) <= MAX_ANNOUNCE_BYTES or not models:
                return data
            models.pop()


def announcement_from_info(peer_id: str, info: InfoResponse, seq: int, at: float) -> Announcement:
    """Our announcement from the same info the info protocol answers with."""
    models = tuple(
        ModelPrice(m.id, m.name[:MAX_NAME_CHARS], m.price_per_million, m.price_token)
        for m in info.models[:MAX_MODELS]
    )
    cap = info.capacity
    return Announcement(
        peer_id, models, cap.max_jobs, cap.active_jobs, cap.queued_jobs, seq=seq, time=at
    )


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_COUNT:
        raise AnnouncementError(f"{what} is not a count")
    return value


def _model(item: Any) -> ModelPrice:
    if not isinstance(item, dict):
        raise AnnouncementError("a model entry is not an object")
    model_id, price, token = item.get("id"), item.get("price"), item.get("token")
    name = item.get("name")
    if not isinstance(model_id, str) or not 0 < len(model_id) <= MAX_ID_CHARS:
        raise AnnouncementError("a model id is missing or too long")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise AnnouncementError("a model name is missing or too long")
    if not isinstance(price, str) or not price.isdigit() or len(price) > 78:
        raise AnnouncementError("a model price is not a decimal integer string")
    if not isinstance(token, str) or len(token) > 42:
        raise AnnouncementError("a model price token is not an address")
    return ModelPrice(model_id, name, int(price), token)


def parse_announcement(data: bytes) -> Announcement:
    """An announcement from message bytes, or AnnouncementError."""
    if len(data) > MAX_ANNOUNCE_BYTES:
        raise AnnouncementError(f"announcement of {len(data)} bytes exceeds {MAX_ANNOUNCE_BYTES}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnouncementError(f"announcement is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != ANNOUNCE_VERSION:
        raise AnnouncementError(f"announcement is not version {ANNOUNCE_VERSION}")
    peer, models, capacity = doc.get("peer"), doc.get("models"), doc.get("capacity")
    at = doc.get("time")
    if not isinstance(peer, str) or not 0 < len(peer) <= MAX_ID_CHARS:
        raise AnnouncementError("announcement lacks the peer id")
    if not isinstance(models, list) or len(models) > MAX_MODELS:
        raise AnnouncementError(f"announcement models is not a list of at most {MAX_MODELS}")
    if not isinstance(capacity, list) or len(capacity) != 3:
        raise AnnouncementError("announcement capacity is not [max, active, queued]")
    if not isinstance(at, int | float) or isinstance(at, bool) or at < 0:
        raise AnnouncementError("announcement time is not a number of seconds")
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        raise AnnouncementError("announcement seq is not a non-negative integer")
    return Announcement(
        peer_id=peer,
        models=tuple(_model(item) for item in models),
        max_jobs=_count(capacity[0], "max_jobs"),
        active_jobs=_count(capacity[1], "active_jobs"),
        queued_jobs=_count(capacity[2], "queued_jobs"),
        seq=seq,
        time=float(at),
    )


def signer_matches(from_id: bytes, announcement: Announcement) -> bool:
    """True when the pubsub message's (signed) origin is the peer the document names."""
    from libp2p.peer.id import ID

    try:
        return ID(from_id).to_base58() == announcement.peer_id
    except Exception:  # an unparsable origin is a mismatch
        return False


def _log_announcement(peer_id: str, announcement: Announcement) -> None:
    _log.debug("announcement from %s: %d model(s)", peer_id, len(announcement.models))


class Announcer:
    """Node component: publish our announcement, validate and deliver everyone else's."""

    name = "announce"

    def __init__(
        self,
        info_provider: Callable[[], InfoResponse],
        *,
        interval_s: float = 30.0,
        on_announcement: Callable[[str, Announcement], None] = _log_announcement,
        min_gap_s: float = MIN_PUBLISH_GAP_S,
        log: Callable[[LogLevel, str, str], None] | None = None,
    ) -> None:
        self._info_provider = info_provider
        self.interval_s = interval_s
        self.min_gap_s = max(min_gap_s, MIN_PUBLISH_GAP_S)
        self.on_announcement = on_announcement
        self._log_fn = log
        self._bridge: TrioBridge | None = None
        self.pubsub: Any = None
        self.published = 0
        self.received = 0
        self.refused = 0
        self._last_seq: dict[str, int] = {}
        self._seq = 0

    async def attach(self, host: IHost, bridge: TrioBridge, nursery: trio.Nursery) -> None:
        """Start Pubsub and GossipSub as services, subscribe, start the publish loop."""
        from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
        from libp2p.pubsub.pubsub import Pubsub

        self._bridge = bridge
        router = GossipSub(
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
        )
        self.pubsub = Pubsub(host, router)
        await nursery.start(_run_services, self.pubsub, router)
        self.pubsub.set_topic_validator(TOPIC, self._validate, False)
        subscription = await self.pubsub.subscribe(TOPIC)
        nursery.start_soon(self._receive_loop, host, subscription)
        nursery.start_soon(self._publish_loop, host)

    # --- trio side -----------------------------------------------------------------------

    def _validate(self, forwarder: Any, msg: Any) -> bool:
        """Pubsub topic validator: refuse what is malformed or names another peer."""
        try:
            announcement = parse_announcement(msg.data)
        except AnnouncementError as exc:
            _log.debug("refused an announcement forwarded by %s: %s", forwarder, exc)
            self.refused += 1
            return False
        if not signer_matches(msg.from_id, announcement):
            _log.debug("refused an announcement for %s signed by another", announcement.peer_id)
            self.refused += 1
            return False
        return True

    async def _receive_loop(self, host: IHost, subscription: Any) -> None:
        me = str(host.get_id())
        while True:
            msg = await subscription.get()
            try:
                announcement = parse_announcement(msg.data)
            except AnnouncementError:
                continue  # the validator already refused it; pubsub delivers our own too
            peer = announcement.peer_id
            if peer == me or announcement.seq <= self._last_seq.get(peer, -1):
                continue  # our own, or a replay of an older one
            self._last_seq[peer] = announcement.seq
            self.received += 1
            self._deliver(peer, announcement)

    def _deliver(self, peer: str, announcement: Announcement) -> None:
        """Hand it to the consumer (trio side); its failure is a log line, not a crash."""
        try:
            self.on_announcement(peer, announcement)
        except Exception:
            _log.exception("the announcement callback failed for %s", peer)

    async def _current_info(self) -> InfoResponse | None:
        from fabstir_tui.engine.p2p.discovery import call_on_loop

        assert self._bridge is not None
        try:
            return await call_on_loop(self._bridge, self._info_provider)
        except Exception as exc:
            self._say("warning", f"could not build the announcement: {exc}")
            return None

    async def _publish_loop(self, host: IHost) -> None:
        peer = str(host.get_id())
        last_content: tuple[Any, ...] | None = None
        last_publish = -float("inf")  # trio.current_time() may start near 0
        while True:
            info = await self._current_info()
            now = trio.current_time()
            if info is not None and now - last_publish >= self.min_gap_s:
                self._seq = max(self._seq + 1, time.time_ns() // 1_000_000)
                announcement = announcement_from_info(peer, info, self._seq, time.time())
                changed = announcement.content() != last_content
                if changed or now - last_publish >= self.interval_s:
                    try:
                        await self.pubsub.publish(TOPIC, announcement.encode())
                    except Exception as exc:  # retried next round
                        self._say("warning", f"could not publish the announcement: {exc}")
                    else:
                        self.published += 1
                        last_content, last_publish = announcement.content(), now
            await trio.sleep(CHANGE_POLL_S)

    def _say(self, level: LogLevel, message: str) -> None:
        if self._log_fn is not None and self._bridge is not None:
            try:
                self._bridge.to_asyncio(self._log_fn, level, "announce", message)
                return
            except Exception:  # the loop is gone while stopping
                pass
        _log.warning("%s", message)


async def _run_services(
    pubsub: Any, router: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Pubsub and its router run as services for as long as the component's nursery lives."""
    from libp2p.tools.anyio_service import background_trio_service

    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        task_status.started()
        await trio.sleep_forever()
