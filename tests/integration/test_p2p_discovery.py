"""Discovery in one process: five real libp2p hosts (P2PService, 127.0.0.1) form a private
Kademlia DHT through one bootstrap peer, provide their models, publish signed info records and
GossipSub announcements; a client joins through the bootstrap peer and finds each model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from fabstir_tui.client.discovery import find_hosts
from fabstir_tui.config import Config, P2pSection, PathsSection
from fabstir_tui.engine.p2p.announce import Announcement, Announcer
from fabstir_tui.engine.p2p.dht_lookup import HostFound, lookup_model
from fabstir_tui.engine.p2p.discovery import KAD_PROTOCOL, DhtDiscovery
from fabstir_tui.engine.p2p.info_record import (
    InfoRecordError,
    info_record_key,
    sign_info_record,
    verify_info_record,
)
from fabstir_tui.engine.p2p.messages import Capacity, InfoResponse, ModelOffer
from fabstir_tui.engine.p2p.service import P2PService

# One network for the module: starting five hosts costs seconds, and each test uses its own ids.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

LOCAL = "/ip4/127.0.0.1/tcp/0"
TOKEN = "0x" + "ab" * 20
T = TypeVar("T")


def model_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@dataclass
class Peer:
    """One running service with its discovery components and what it serves."""

    service: P2PService
    dht: DhtDiscovery
    announcer: Announcer
    models: list[str]
    price: int
    heard: list[tuple[str, Announcement]] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return self.service.peer_id

    @property
    def addr(self) -> str:
        [addr] = [a for a in self.service.listen_addrs() if a.startswith("/ip4/127.0.0.1/")]
        return addr

    def info(self) -> InfoResponse:
        offers = tuple(ModelOffer(m, f"model-{m[:6]}", self.price, TOKEN) for m in self.models)
        return InfoResponse(
            models=offers,
            capacity=Capacity(max_jobs=2, active_jobs=0),
            api_url="http://127.0.0.1:9/",
            chain_address="",
            version="test",
        )


async def start_peer(tmp: Path, index: int, bootstrap: list[str]) -> Peer:
    config = Config(
        paths=PathsSection(data_dir=tmp / f"node{index}", cache_dir=tmp / f"cache{index}"),
        p2p=P2pSection(enabled=True, listen_addrs=[LOCAL], bootstrap=bootstrap),
    )
    holder: list[Peer] = []

    def info() -> InfoResponse:
        return holder[0].info()

    dht = DhtDiscovery(info, reprovide_interval_s=600, change_poll_s=0.5)
    announcer = Announcer(
        info, interval_s=2, on_announcement=lambda p, a: peer.heard.append((p, a))
    )
    service = P2PService(config, info, components=(dht, announcer))
    peer = Peer(
        service,
        dht,
        announcer,
        [model_id(f"node{index}-a"), model_id(f"node{index}-b")],
        price=1000 + index,
    )
    holder.append(peer)
    await service.start()
    return peer


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, limit_s: float = 60) -> T:
    """Poll until `probe` returns something; the limit is a safety net, not an assertion."""
    try:
        async with asyncio.timeout(limit_s):
            while True:
                value = await probe()
                if value is not None:
                    return value
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def network(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[Peer]]:
    tmp_path = tmp_path_factory.mktemp("discovery")
    peers: list[Peer] = []
    try:
        first = await start_peer(tmp_path, 0, [])
        peers.append(first)
        for index in range(1, 5):
            peers.append(await start_peer(tmp_path, index, [first.addr]))
        yield peers
    finally:
        for peer in reversed(peers):
            await peer.service.stop()


async def find_on(peer: Peer, model: str) -> list[HostFound]:
    return await peer.service.bridge.run(peer.dht.find, model)


async def test_every_node_finds_every_other_nodes_models(network: list[Peer]) -> None:
    started = time.monotonic()
    for seeker in network:
        for owner in network:
            if owner is seeker:
                continue
            for model in owner.models:

                async def probe(
                    seeker: Peer = seeker, owner: Peer = owner, model: str = model
                ) -> list[HostFound] | None:
                    hosts = await find_on(seeker, model)
                    # The provider record can land before the signed record is readable; the
                    # lookup then asks the host itself ("query"). Wait for the record path.
                    found = any(h.peer_id == owner.peer_id and h.source == "record" for h in hosts)
                    return hosts if found else None

                hosts = await eventually(probe, f"{seeker.peer_id} to find {model[:8]}")
                assert [h.peer_id for h in hosts] == [owner.peer_id]  # once, and nobody else
                [host] = hosts
                assert host.source == "record"
                assert host.info is not None
                offer = {m.id: m for m in host.info.models}[model]
                assert offer.price_per_million == owner.price
                assert owner.addr in host.addrs
    print(f"\n20 seekers x 2 models found in {time.monotonic() - started:.1f} s")


async def test_the_kad_protocol_is_private(network: list[Peer]) -> None:
    """Our DHT speaks /fabstir/kad/1.0.0, not the public /ipfs/kad/1.0.0."""
    protocols = await network[0].service.bridge.run(_protocols, network[0].service.host)
    assert KAD_PROTOCOL in protocols
    assert "/ipfs/kad/1.0.0" not in protocols


async def _protocols(host: Any) -> list[str]:
    return [str(p) for p in host.get_mux().get_protocols()]


async def test_a_late_model_is_provided_and_found(network: list[Peer]) -> None:
    late = model_id("added later")
    network[3].models.append(late)

    async def probe() -> list[HostFound] | None:
        hosts = await find_on(network[1], late)
        return hosts or None

    started = time.monotonic()
    hosts = await eventually(probe, "the model added at runtime")
    print(f"\nmodel added at runtime found after {time.monotonic() - started:.1f} s")
    assert [h.peer_id for h in hosts] == [network[3].peer_id]


async def test_a_withdrawn_model_is_no_longer_listed(network: list[Peer]) -> None:
    """Its provider records stay in the DHT for a day; the host's newer info drops it."""
    owner, seeker = network[3], network[0]
    gone = model_id("withdrawn later")
    owner.models.append(gone)

    async def listed() -> list[HostFound] | None:
        hosts = await find_on(seeker, gone)
        return hosts or None

    await eventually(listed, "the model before its withdrawal")
    owner.models.remove(gone)

    async def withdrawn() -> bool | None:
        hosts = await find_on(seeker, gone)
        return True if not hosts else None

    await eventually(withdrawn, "the withdrawn model to drop out")

    async def stale() -> list[HostFound] | None:
        # Another DHT node may still hand out the owner's previous record for a moment.
        found = await seeker.service.bridge.run(_find_withdrawn, seeker, gone)
        info = found[0].info if found else None
        return found if info is not None and gone not in {m.id for m in info.models} else None

    found = await eventually(stale, "the owner's newer info without the model")
    assert [h.peer_id for h in found] == [owner.peer_id]  # the provider record is still there


async def _find_withdrawn(peer: Peer, model: str) -> list[HostFound]:
    assert peer.dht.dht is not None
    host = peer.service.host
    return await lookup_model(peer.dht.dht, host, model, include_withdrawn=True)


async def test_a_shared_model_lists_each_provider_once(network: list[Peer]) -> None:
    shared = model_id("served by two")
    network[2].models.append(shared)
    network[4].models.append(shared)
    want = {network[2].peer_id, network[4].peer_id}

    async def probe() -> list[HostFound] | None:
        hosts = await find_on(network[0], shared)
        return hosts if {h.peer_id for h in hosts} == want else None

    hosts = await eventually(probe, "both providers of the shared model")
    assert sorted(h.peer_id for h in hosts) == sorted(want)


async def test_a_forged_record_is_refused_by_remote_peers(network: list[Peer]) -> None:
    victim, forger, holder = network[1], network[2], network[0]
    key = info_record_key(victim.peer_id).encode()

    async def genuine() -> bytes | None:
        return await holder.service.bridge.run(_stored_value, holder, key)

    original = await eventually(genuine, "the victim's record at the bootstrap peer")
    assert (
        verify_info_record(original, victim.peer_id).info.models[0].price_per_million
        == victim.price
    )
    # Tampered: the victim's body with a lower price, the victim's signature kept.
    envelope = json.loads(original)
    body = json.loads(envelope["body"])
    body["info"]["models"][0]["price_per_million"] = 1
    body["seq"] += 10**9
    envelope["body"] = json.dumps(body, separators=(",", ":"), sort_keys=True)
    tampered = json.dumps(envelope).encode()
    # Re-signed by the forger under the victim's key: signature valid, but not the victim's.
    forged = await forger.service.bridge.run(_forge, forger, victim.peer_id, victim.info())
    for bad in (tampered, forged, b"not a record"):
        with pytest.raises(InfoRecordError):
            verify_info_record(bad, victim.peer_id)
        sent = await forger.service.bridge.run(_push_value, forger, holder, key, bad)
        assert sent  # the PUT_VALUE went out; the holder must refuse it
        assert await holder.service.bridge.run(_stored_value, holder, key) == original


async def _stored_value(peer: Peer, key: bytes) -> bytes | None:
    assert peer.dht.dht is not None
    record = peer.dht.dht.value_store.get(key)
    return None if record is None else bytes(record.value)


async def _forge(forger: Peer, victim_id: str, info: InfoResponse) -> bytes:
    host = forger.service.host
    return sign_info_record(host.get_private_key(), victim_id, info, [], seq=2**62)


async def _push_value(forger: Peer, holder: Peer, key: bytes, value: bytes) -> bool:
    """Send a raw PUT_VALUE to the holder, bypassing our own validation."""
    from libp2p.peer.id import ID

    assert forger.dht.dht is not None
    store = forger.dht.dht.value_store
    await store._store_at_peer(ID.from_base58(holder.peer_id), key, value)
    return True


async def test_announcements_reach_other_nodes(network: list[Peer]) -> None:
    speaker = network[4]

    def latest(listener: Peer) -> Announcement | None:
        mine = [a for p, a in listener.heard if p == speaker.peer_id]
        return mine[-1] if mine else None

    async def heard() -> Announcement | None:
        """The speaker's current models at every other node (other tests add models)."""
        for listener in network[:4]:
            last = latest(listener)
            if last is None or {m.id for m in last.models} != set(speaker.models):
                return None
        return latest(network[0])

    started = time.monotonic()
    announcement = await eventually(heard, "the speaker's announcement at every other node")
    print(f"\nannouncement heard everywhere after {time.monotonic() - started:.1f} s")
    assert announcement.peer_id == speaker.peer_id
    for listener in network[:4]:
        seqs = [a.seq for p, a in listener.heard if p == speaker.peer_id]
        assert seqs == sorted(set(seqs))  # each delivered once, in order
    assert {m.price_per_million for m in announcement.models} == {speaker.price}
    assert (announcement.max_jobs, announcement.active_jobs) == (2, 0)
    for listener in network:
        assert all(p != listener.peer_id for p, _ in listener.heard)  # never our own
        assert listener.announcer.refused == 0


async def test_a_client_finds_each_model_through_the_bootstrap_peer(network: list[Peer]) -> None:
    bootstrap = [network[0].addr]
    for owner in network[1:]:
        model = owner.models[0]

        async def probe(model: str = model) -> list[HostFound] | None:
            hosts = await find_hosts(model, bootstrap, timeout_s=30)
            return hosts or None

        started = time.monotonic()
        hosts = await eventually(probe, f"the client to find {model[:8]}")
        print(f"\nclient found {model[:8]} in {time.monotonic() - started:.1f} s")
        assert [h.peer_id for h in hosts] == [owner.peer_id]
        assert hosts[0].info is not None and hosts[0].source == "record"


async def test_an_announcement_naming_another_peer_is_refused(network: list[Peer]) -> None:
    """A peer whose own validator is off publishes a document naming someone else: every
    receiver's validator refuses it and no callback sees it."""
    from fabstir_tui.engine.p2p.announce import TOPIC, announcement_from_info

    forger, victim = network[3], network[1]
    fake = announcement_from_info(victim.peer_id, forger.info(), seq=2**62, at=time.time())
    before = [p.announcer.refused for p in network]
    await forger.service.bridge.run(_publish_unchecked, forger, TOPIC, fake.encode())

    async def refused() -> bool | None:
        others = [p for p in network if p is not forger]
        return True if all(p.announcer.refused > before[network.index(p)] for p in others) else None

    await eventually(refused, "every other node to refuse the forged announcement")
    for listener in network:
        if listener is not forger:  # the forger switched its own check off
            assert all(a.seq != 2**62 for _, a in listener.heard)


async def _publish_unchecked(forger: Peer, topic: str, data: bytes) -> None:
    pubsub = forger.announcer.pubsub
    validator = pubsub.topic_validators.pop(topic)
    try:
        await pubsub.publish(topic, data)
    finally:
        pubsub.topic_validators[topic] = validator


async def test_a_late_joiner_finds_models(network: list[Peer], tmp_path: Path) -> None:
    """A sixth node joins through a non-first peer, then looks models up (time is reported)."""
    late = await start_peer(tmp_path, 9, [network[2].addr])
    try:
        for owner in (network[0], network[4]):
            model = owner.models[0]

            async def probe(model: str = model) -> list[HostFound] | None:
                hosts = await find_on(late, model)
                return hosts or None

            started = time.monotonic()
            hosts = await eventually(probe, f"the late joiner to find {model[:8]}")
            print(f"\nlate joiner found {model[:8]} in {time.monotonic() - started:.2f} s")
            assert [h.peer_id for h in hosts] == [owner.peer_id]
    finally:
        await late.service.stop()
