"""Builds and runs the py-libp2p host with the workarounds measured in FIELD-NOTES.

Persisted ed25519 identity (0600, written atomically), Noise only (a default host also accepts
plaintext and secio), yamux only, one connection per peer (otherwise every dial waits 250 ms),
`host.close()` inside the `run()` block (leaving `run()` alone leaks sockets), and admission
control for bursts of inbound handshakes (admission.py). libp2p is imported inside functions:
`import libp2p` costs 1.4-1.8 s, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fabstir_tui.engine.p2p.bridge import TrioBridge

if TYPE_CHECKING:
    from libp2p.abc import IHost
    from libp2p.crypto.keys import KeyPair

_log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class HostConfig:
    """What the node's config decides about its libp2p host."""

    identity_path: Path
    listen_addrs: Sequence[str] = ("/ip4/0.0.0.0/tcp/4001",)
    # Negotiation limits: multiselect is cut from the library's 30 s so an abandoned handshake
    # frees its slot sooner. With admission control each inbound upgrade's 10 s starts at its
    # turn, so a burst no longer runs them all past their limits together (admission.py).
    negotiate_timeout_s: int = 10
    upgrade_timeout_s: float = 10.0
    dial_timeout_s: float = 10.0
    max_connections: int = 300
    # Admission control (admission.py): inbound upgrades run at most this many at once, the
    # rest wait their turn up to `admission_queue_s`, and a newcomer keeps its slot until its
    # first application stream is handled or `admission_settle_s` passes; None leaves the
    # library's behaviour.
    max_handshakes: int | None = 16
    admission_queue_s: float = 30.0
    admission_settle_s: float = 0.5


def load_or_create_identity(path: Path) -> KeyPair:
    """Load the node's ed25519 key, creating it once so the peer id survives restarts."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.identity_utils import load_identity

    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            _log.warning("identity %s had mode %o; tightening to 0600", path, mode)
            path.chmod(0o600)
        return load_identity(path)
    key_pair = create_new_key_pair()
    _write_atomic_0600(path, key_pair.private_key.serialize())
    # Read back what is on disk: if another process won the creation race, its key is the one.
    return load_identity(path)


def _write_atomic_0600(path: Path, data: bytes) -> None:
    """Write to a 0600 temp file in the same directory, fsync, then link it into place so a
    crash never leaves a half-written key and a concurrent creator never overwrites ours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".identity-", dir=path.parent)  # mkstemp uses 0600
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def build_host(config: HostConfig, key_pair: KeyPair) -> IHost:
    """Create (not start) a host: Noise only, yamux only, one connection per peer."""
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    noise = NoiseTransport(key_pair, noise_privkey=create_x25519().private_key)
    connection = ConnectionConfig(
        max_connections_per_peer=1,
        max_connections=config.max_connections,
        dial_timeout=config.dial_timeout_s,
        inbound_upgrade_timeout=config.upgrade_timeout_s,
        outbound_upgrade_timeout=config.upgrade_timeout_s,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: noise},
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
        listen_addrs=[multiaddr.Multiaddr(a) for a in config.listen_addrs],
        negotiate_timeout=config.negotiate_timeout_s,
        connection_config=connection,
    )
    if config.max_handshakes is not None:
        from fabstir_tui.engine.p2p.admission import InboundAdmission

        admission = InboundAdmission(
            config.max_handshakes, config.admission_queue_s, config.admission_settle_s
        )
        admission.install(host.get_network())
    _without_auto_connect(host)
    return host


async def _no_auto_connect() -> None:
    """Replaces the swarm's auto-connector round (see `_without_auto_connect`)."""


def _without_auto_connect(host: IHost) -> None:
    """libp2p 0.8.1 keeps 50-150 connections by dialling every peer in its peer store every
    10-30 s; for a market node that means dialling back every client that ever visited (a
    150-newcomer burst is followed by 150 failed dials) and re-dialling a peer the operator
    disconnected. Our peers come from bootstrap, the DHT and mDNS, so its round is a no-op."""
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        connector.maybe_connect = _no_auto_connect


@contextlib.asynccontextmanager
async def running_host(config: HostConfig, key_pair: KeyPair | None = None) -> AsyncIterator[IHost]:
    """Trio side: a listening host for the duration of the block, closed inside `run()`."""
    import multiaddr

    pair = key_pair if key_pair is not None else load_or_create_identity(config.identity_path)
    host = build_host(config, pair)
    async with host.run([multiaddr.Multiaddr(a) for a in config.listen_addrs]):
        try:
            yield host
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
                scope.shield = True
                await host.close()
            if scope.cancelled_caught:
                _log.warning("libp2p host did not close within %.0f s", CLOSE_TIMEOUT_S)


class HostHandle:
    """asyncio side: one host kept running as a service inside a TrioBridge."""

    def __init__(self, bridge: TrioBridge, host: IHost, stop_scope: trio.CancelScope) -> None:
        self.bridge = bridge
        self.host = host
        self._scope = stop_scope
        self._closed = trio.Event()
        self._stopped = False

    @classmethod
    async def start(
        cls, bridge: TrioBridge, config: HostConfig, key_pair: KeyPair | None = None
    ) -> HostHandle:
        """Start listening; returns once the listen addresses are bound."""
        handle: HostHandle = await bridge.start_service(_serve, bridge, config, key_pair)
        return handle

    @property
    def peer_id(self) -> str:
        """Our peer id in its usual base58 form."""
        return str(self.host.get_id())

    def addrs(self) -> list[str]:
        """Listen addresses including the /p2p/<peer id> suffix, ready to dial."""
        return [str(a) for a in self.host.get_addrs()]

    async def connect(self, addr: str) -> str:
        """Dial a full multiaddr (with /p2p/...) and return the remote peer id."""
        return await self.bridge.run(_connect, self.host, addr)

    async def stop(self) -> None:
        """Close the host (inside its run block) and wait for it; safe to call twice."""
        if self._stopped or not self.bridge.running:
            self._stopped = True
            return
        self._stopped = True
        await self.bridge.run(self._stop_in_trio)

    async def _stop_in_trio(self) -> None:
        self._scope.cancel()
        await self._closed.wait()


async def _serve(
    bridge: TrioBridge,
    config: HostConfig,
    key_pair: KeyPair | None,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Trio service body: run the host until its handle cancels the scope."""
    handle: HostHandle | None = None
    with trio.CancelScope() as scope:
        try:
            async with running_host(config, key_pair) as host:
                handle = HostHandle(bridge, host, scope)
                task_status.started(handle)
                await trio.sleep_forever()
        finally:
            if handle is not None:
                handle._closed.set()


async def _connect(host: IHost, addr: str) -> str:
    """Trio side of HostHandle.connect."""
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    await host.connect(info)
    return str(info.peer_id)
