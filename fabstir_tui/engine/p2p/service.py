"""The node's P2P side (DESIGN §5): one libp2p host in a TrioBridge, serving the info protocol.

`P2PService` is owned by the Node and driven from asyncio. Stream handlers run in trio and
must never raise: an exception escaping a handler could reach the bridge's nursery and end
the trio run, so every failure becomes an error frame, a clean close, or a log line.
The info answer is built on the asyncio side (`info_provider`, through `call_asyncio`), so
the provider may read Node state without locks in both bridge modes.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fabstir_tui.engine.events import LogLevel
from fabstir_tui.engine.p2p.bridge import Mode, TrioBridge
from fabstir_tui.engine.p2p.component import P2PComponent
from fabstir_tui.engine.p2p.frames import FrameError
from fabstir_tui.engine.p2p.host import HostConfig, HostHandle
from fabstir_tui.engine.p2p.messages import (
    INFO_PROTOCOL,
    MAX_MODELS,
    MAX_TEXT_CHARS,
    Capacity,
    ErrorCode,
    GpuInfo,
    InfoResponse,
    ModelOffer,
    error_frame,
    error_frame_for,
    parse_info_request,
)
from fabstir_tui.engine.p2p.streams import frame_reader, serve_guarded, write_frame

if TYPE_CHECKING:
    from fabstir_tui.config import Config
    from fabstir_tui.engine.chain.events import ChainStatus
    from fabstir_tui.engine.events import EventBus
    from fabstir_tui.engine.node import NodeSnapshot

_log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
BOOTSTRAP_DIAL_TIMEOUT_S = 15.0
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def package_version() -> str:
    """The installed fabstir-tui version (the source tree's when not installed)."""
    try:
        return importlib.metadata.version("fabstir-tui")
    except importlib.metadata.PackageNotFoundError:
        from fabstir_tui import __version__

        return __version__


def _std_log(level: LogLevel, source: str, message: str) -> None:
    _log.log(_LEVELS.get(level, logging.ERROR), "%s: %s", source, message)


def _hex_key(model_id: str) -> str:
    return model_id.lower().removeprefix("0x")


def node_info(
    snapshot: NodeSnapshot,
    chain: ChainStatus | None,
    api_url: str,
    version: str,
    slots: tuple[int, int, int] | None = None,
) -> InfoResponse:
    """The info answer from the node's state: every hashed model on disk (its id is the
    SHA-256 of the file), priced from the chain registration when it lists the model
    (0 when it does not), the first GPU and the chain address when they are known, and the
    capacity from `slots` = (slots, busy, waiting) over the loaded models."""
    prices = {_hex_key(mid): price for mid, price in chain.models} if chain is not None else {}
    token = chain.price_token if chain is not None else ""
    token = token if _ADDRESS.fullmatch(token) else ""
    offers: list[ModelOffer] = []
    seen: set[str] = set()
    for model in snapshot.models:
        if model.sha256 is None or model.error is not None or model.sha256 in seen:
            continue
        seen.add(model.sha256)
        offers.append(
            ModelOffer(
                id=model.sha256,
                name=model.name[:MAX_TEXT_CHARS],
                price_per_million=prices.get(_hex_key(model.sha256), 0),
                price_token=token,
            )
        )
    gpu = None
    if snapshot.gpu is not None and snapshot.gpu.available and snapshot.gpu.devices:
        first = snapshot.gpu.devices[0]
        gpu = GpuInfo(
            name=(first.name or "unknown")[:MAX_TEXT_CHARS],
            vram_mib=(first.memory_total_bytes or 0) // (1024 * 1024),
            count=len(snapshot.gpu.devices),
        )
    address = chain.address if chain is not None and _ADDRESS.fullmatch(chain.address) else ""
    total, busy, waiting = slots if slots is not None else (len(snapshot.loaded), 0, 0)
    chain_id = chain.chain_id if chain is not None and chain.chain_id >= 1 else None
    return InfoResponse(
        models=tuple(offers[:MAX_MODELS]),
        capacity=Capacity(max_jobs=total, active_jobs=busy, queued_jobs=waiting),
        api_url=api_url,
        chain_address=address,
        version=version,
        gpu=gpu,
        chain_id=chain_id,
    )


class LibraryLogForwarder(logging.Handler):
    """libp2p's own warnings (a client that does not speak our DHT, a peer gone mid-stream)
    go to the node's log at debug level instead of stderr, where they would print over the
    TUI and fill the headless log with multi-line reports about other people's peers."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, log: Callable[[LogLevel, str, str], None]
    ) -> None:
        super().__init__(logging.WARNING)
        self._loop = loop
        self._forward = log
        self._logger = logging.getLogger("libp2p")

    def attach(self) -> None:
        """Handle the library's logger: it does not propagate, so without a handler of its own
        Python's last-resort handler prints it to stderr. Importing libp2p clears the logger's
        handlers (libp2p.utils.logging), so the import comes first."""
        import libp2p  # noqa: F401

        self._logger.addHandler(self)

    def detach(self) -> None:
        """Stop forwarding (a stopped node's loop may be gone)."""
        self._logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Forward the first line, on the loop's thread (libp2p may log from a trio thread)."""
        try:
            first = record.getMessage().strip().splitlines()[0][:300] if record.msg else ""
            self._loop.call_soon_threadsafe(self._forward, "debug", "libp2p", first)
        except Exception:  # a closed loop or an odd record: a log line is not worth a crash
            pass


@dataclass(frozen=True, slots=True)
class P2PStatus:
    """What the operator needs to hand out: the peer id and the dialable addresses."""

    peer_id: str
    listen_addrs: tuple[str, ...]


class P2PService:
    """The node's libp2p host and its protocol handlers; start/stop from asyncio."""

    def __init__(
        self,
        config: Config,
        info_provider: Callable[[], InfoResponse],
        bus: EventBus | None = None,
        log: Callable[[LogLevel, str, str], None] = _std_log,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        bridge_mode: Mode = "guest",
        components: tuple[P2PComponent, ...] = (),
    ) -> None:
        self.config = config
        self.components = components
        self._components_scope: trio.CancelScope | None = None
        self._info_provider = info_provider
        self._bus = bus
        self._log = log
        self.request_timeout_s = request_timeout_s
        self._bridge = TrioBridge(mode=bridge_mode)
        self._handle: HostHandle | None = None
        self._stopped = False
        self._library_log: LibraryLogForwarder | None = None

    @property
    def identity_path(self) -> Path:
        """Where the node's libp2p key lives: p2p.identity, else <data_dir>/p2p-identity."""
        p2p = self.config.p2p
        if p2p.identity is not None:
            return p2p.identity
        return self.config.paths.data_dir / "p2p-identity"

    @property
    def peer_id(self) -> str:
        """Our peer id (base58)."""
        if self._handle is None:
            raise RuntimeError("the P2P service is not running")
        return self._handle.peer_id

    @property
    def running(self) -> bool:
        """True while the host is up."""
        return self._handle is not None and self._bridge.running and not self._stopped

    def listen_addrs(self) -> list[str]:
        """The bound listen addresses with /p2p/<peer id>, ready to dial."""
        return self._handle.addrs() if self._handle is not None else []

    def connected_peers(self) -> list[str]:
        """Peer ids we hold a connection to now."""
        if self._handle is None:
            return []
        return [str(p) for p in self._handle.host.get_connected_peers()]

    def status(self) -> P2PStatus | None:
        """Peer id and addresses, or None when not running."""
        if not self.running:
            return None
        return P2PStatus(self.peer_id, tuple(self.listen_addrs()))

    async def start(self) -> None:
        """Start the bridge and the host, register handlers, dial bootstrap peers in the
        background; on failure everything started is stopped again and the error raised."""
        if self._stopped:
            raise RuntimeError("a P2PService starts once")
        self._library_log = LibraryLogForwarder(asyncio.get_running_loop(), self._log)
        self._library_log.attach()
        p2p = self.config.p2p
        host_config = HostConfig(
            self.identity_path, tuple(p2p.listen_addrs), max_handshakes=p2p.max_handshakes
        )
        await self._bridge.start()
        try:
            self._handle = await HostHandle.start(self._bridge, host_config)
            await self._bridge.run(self._register, self._handle.host)
            if self.components:
                self._components_scope = await self._bridge.start_service(
                    self._run_components, self._handle.host
                )
        except BaseException:
            await self.stop()
            raise
        for addr in p2p.bootstrap:
            self._bridge.spawn(self._dial_bootstrap, addr)
        self._log("info", "p2p", f"libp2p host {self.peer_id} on {', '.join(self.listen_addrs())}")

    async def stop(self) -> None:
        """Close the host and end the trio run; safe to call twice and after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        if self._library_log is not None:
            self._library_log.detach()
        handle, self._handle = self._handle, None
        try:
            scope, self._components_scope = self._components_scope, None
            if scope is not None and self._bridge.running:
                await self._bridge.run(_cancel_scope, scope)
            if handle is not None:
                await handle.stop()
        finally:
            await self._bridge.stop()

    @property
    def bridge(self) -> TrioBridge:
        """The trio bridge the host runs in (for components and clients of the host)."""
        return self._bridge

    @property
    def host(self) -> Any:
        """The running libp2p host (trio side only), or None."""
        return self._handle.host if self._handle is not None else None

    # --- trio side -----------------------------------------------------------------------

    async def _run_components(
        self, host: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Attach every component inside one nursery that `stop` cancels before the host."""
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                for component in self.components:
                    await component.attach(host, self._bridge, nursery)
                task_status.started(scope)
                await trio.sleep_forever()

    async def _register(self, host: Any) -> None:
        from libp2p.custom_types import TProtocol

        host.set_stream_handler(TProtocol(INFO_PROTOCOL), self._handle_info)

    def _log_from_trio(self, level: LogLevel, message: str) -> None:
        try:
            self._bridge.to_asyncio(self._log, level, "p2p", message)
        except Exception:  # the loop is gone while stopping
            _log.log(_LEVELS.get(level, logging.ERROR), "%s", message)

    async def _dial_bootstrap(self, addr: str) -> None:
        handle = self._handle
        if handle is None:
            return
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        try:
            with trio.fail_after(BOOTSTRAP_DIAL_TIMEOUT_S):
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
                await handle.host.connect(info)
                peer = str(info.peer_id)
        except Exception as exc:  # a bootstrap peer being down is not fatal
            self._log_from_trio(
                "warning", f"bootstrap peer {addr} unreachable: {exc or type(exc).__name__}"
            )
            return
        self._log_from_trio("info", f"connected to bootstrap peer {peer}")

    async def _handle_info(self, stream: Any) -> None:
        """One request, one answer, close; never raises (but lets cancellation through)."""
        await serve_guarded(stream, self._answer_info, INFO_PROTOCOL)

    async def _answer_info(self, stream: Any) -> None:
        reader = frame_reader(stream, read_timeout_s=self.request_timeout_s)
        try:
            frame = await reader.read_frame()
            if frame is None:
                return  # the peer closed without asking: nothing to answer
            parse_info_request(frame)
        except FrameError as exc:
            reply = error_frame_for(exc)
        except trio.TooSlowError:
            reply = error_frame(
                ErrorCode.TIMEOUT, f"no complete request within {self.request_timeout_s:g} s"
            )
        else:
            try:
                info = await self._bridge.call_asyncio(self._provide)
                reply = info.to_frame()
            except Exception as exc:  # our bug, reported to the peer briefly
                self._log_from_trio("error", f"could not build the info answer: {exc}")
                reply = error_frame(ErrorCode.INTERNAL, "the node could not build its info")
        await write_frame(stream, reply, timeout_s=WRITE_TIMEOUT_S)

    async def _provide(self) -> InfoResponse:
        return self._info_provider()


async def _cancel_scope(scope: trio.CancelScope) -> None:
    scope.cancel()
