"""Node: owns the engine's services and is the only door the UI and CLI use to command them."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fabstir_tui.config import Config
from fabstir_tui.engine.chain.actions import ChainAction, PreparedTx, describe
from fabstir_tui.engine.chain.events import ChainStatus
from fabstir_tui.engine.chain.ledger import LedgerEntry
from fabstir_tui.engine.chain.service import ChainService
from fabstir_tui.engine.chain.txtypes import TxOutcome
from fabstir_tui.engine.datadir_lock import DataDirLock
from fabstir_tui.engine.events import (
    EventBus,
    GpuSnapshot,
    HostSnapshot,
    LoadedModel,
    LogLevel,
    LogRecorded,
    ModelInfo,
    NodeStateChanged,
    OperatorActionRecorded,
)
from fabstir_tui.engine.inference.manager import ModelManager
from fabstir_tui.engine.inference.registry import ModelRegistry, model_key
from fabstir_tui.engine.inference.stream import (
    GenerationRequest,
    InferenceError,
    LoadRefusedError,
    TokenStream,
)
from fabstir_tui.engine.jobs.pipeline import JobPipeline
from fabstir_tui.engine.node_jobs import JobCommands
from fabstir_tui.engine.node_peers import PeerCommands
from fabstir_tui.engine.p2p.messages import InfoResponse
from fabstir_tui.engine.p2p.peer_book import PeerBook
from fabstir_tui.engine.p2p.service import P2PService, P2PStatus, node_info, package_version
from fabstir_tui.engine.p2p.wiring import node_components
from fabstir_tui.engine.store import Store
from fabstir_tui.engine.telemetry.service import TelemetryService

if TYPE_CHECKING:
    from fabstir_tui.engine.api import ApiService
    from fabstir_tui.engine.api.traffic import ApiSnapshot

NodeState = Literal["starting", "running", "stopping", "stopped", "failed"]


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """Everything a status line needs at one instant."""

    name: str
    state: NodeState
    loaded: tuple[LoadedModel, ...]
    models: tuple[ModelInfo, ...]
    gpu: GpuSnapshot | None
    host: HostSnapshot | None
    read_only: bool
    chain: ChainStatus | None = None


class Node(JobCommands, PeerCommands):
    """One node: store, model registry, inference workers and telemetry, started and stopped
    together; operator commands are methods here and each leaves an audit line."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bus = EventBus()
        self.state: NodeState = "stopped"
        data_dir = config.paths.data_dir
        self.store: Store | None = None
        self.models = ModelManager(config.inference, bus=self.bus)
        self.telemetry = TelemetryService(config.telemetry, self.bus, data_dir)
        self._registry: ModelRegistry | None = None
        self._chain: ChainService | None = None
        self._p2p: P2PService | None = None
        self._api: ApiService | None = None
        self._jobs: JobPipeline | None = None
        self.peer_book = PeerBook(config.p2p, self.bus)
        self._lock: DataDirLock | None = None
        self._logs: deque[LogRecorded] = deque(maxlen=5000)
        self._audit: deque[OperatorActionRecorded] = deque(maxlen=1000)
        self._log_sub = self.bus.subscribe(LogRecorded, OperatorActionRecorded, maxsize=10_000)
        self._log_task: asyncio.Task[None] | None = None
        self._autoload: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            raise RuntimeError("the node has not been started")
        return self._registry

    @property
    def chain(self) -> ChainService:
        if self._chain is None:
            raise RuntimeError("the node has not been started")
        return self._chain

    async def start(self) -> None:
        """Start every service; on failure the state says `failed` with the reason, and raises."""
        self._set_state("starting")
        try:
            await self._start()
        except Exception as exc:
            self._set_state("failed", str(exc))
            self.log("error", "node", f"the node could not start: {exc}")
            raise

    async def _start(self) -> None:
        self.bus.bind(asyncio.get_running_loop())
        counters = None
        if self.config.api.enabled:  # /metrics counts from here: startup's tx recovery too
            from fabstir_tui.engine.api.metrics import EventCounters

            counters = EventCounters()
            counters.ensure_started(self)
        self._log_task = asyncio.create_task(self._keep_logs(), name="node-logbook")
        data_dir = self.config.paths.data_dir
        self._lock = await asyncio.to_thread(DataDirLock.acquire, data_dir)
        self.store = await asyncio.to_thread(Store, data_dir / "node.db")
        for ts, action, detail, outcome in self.store.recent_audit():
            self._audit.append(
                OperatorActionRecorded(action=action, detail=detail, outcome=outcome, ts=ts)
            )
        self._registry = ModelRegistry(list(self.config.paths.models_dirs), self.store, self.bus)
        await asyncio.to_thread(self._registry.scan)
        self._registry.start_hashing()
        self.telemetry.start()
        self._chain = ChainService(self.config, self.store, self.bus, self.log)
        await self._chain.start()
        await self._start_jobs()
        if self.config.p2p.enabled:
            await self._start_p2p()
        if self.config.api.enabled:
            from fabstir_tui.engine.api.service import start_api

            self._api = await start_api(self, counters)
        self._set_state("running")
        self.log("info", "node", f"node {self.config.node.name} started")
        if self.config.inference.load_at_start:
            self._autoload = asyncio.create_task(self._load_at_start(), name="load-at-start")

    def _hashed(self, key: str) -> bool:
        """True once the registry has hashed this file; InferenceError when it is not listed."""
        found = [m for m in self.list_models() if model_key(m.path) == key]
        if not found:
            raise InferenceError(f"{key} is not a model in paths.models_dirs")
        return found[0].sha256 is not None

    async def _load_at_start(self) -> None:
        """inference.load_at_start: a headless node serves without an operator pressing `l`.
        Each file is hashed first (the market and the job protocol know models by SHA-256);
        a file that fails is logged and the rest still load."""
        for path in self.config.inference.load_at_start:
            key = model_key(path)
            try:
                async with asyncio.timeout(self.config.inference.load_timeout_s):
                    while not any(
                        model_key(m.path) == key and m.sha256 for m in self.list_models()
                    ):
                        if not any(model_key(m.path) == key for m in self.list_models()):
                            await self.scan_models()
                            if not any(model_key(m.path) == key for m in self.list_models()):
                                raise InferenceError(f"{key} is not in paths.models_dirs")
                        await asyncio.sleep(0.1)
                await self.load_model(key)
                self.log("info", "node", f"{Path(key).name} loaded at start (load_at_start)")
            except (InferenceError, TimeoutError) as exc:
                self.log("error", "node", f"inference.load_at_start: {Path(key).name}: {exc}")

    async def _start_p2p(self) -> None:
        """Start the libp2p host; a failure is logged and the node runs on without P2P."""
        version = package_version()
        api_url = self.config.p2p.api_url

        def provide() -> InfoResponse:
            return node_info(
                self.snapshot(), self.chain_status(), api_url, version, self.models.slot_totals()
            )

        service = P2PService(
            self.config, provide, bus=self.bus, log=self.log, components=node_components(self)
        )
        try:
            await service.start()
        except Exception as exc:
            self.log("error", "p2p", f"P2P did not start, running without it: {exc}")
            return
        self._p2p = service

    @property
    def api(self) -> ApiService | None:
        """The running client API (its `url`), or None when it is off or failed to start."""
        return self._api

    def api_status(self) -> ApiSnapshot | None:
        """The client API's URL and traffic now, or None when it is off or failed to start."""
        return self._api.snapshot() if self._api is not None else None

    @property
    def p2p(self) -> P2PService | None:
        """The running P2P service, or None when P2P is off or failed to start."""
        return self._p2p

    def p2p_status(self) -> P2PStatus | None:
        """Our peer id and dialable listen addresses, or None when P2P is not running."""
        return self._p2p.status() if self._p2p is not None else None

    async def stop(self) -> None:
        """Stop every service even when one of them fails to stop, then close the store."""
        if self.state in ("stopping", "stopped"):
            return
        self._set_state("stopping")
        if self._autoload is not None:
            self._autoload.cancel()
            await asyncio.gather(self._autoload, return_exceptions=True)
        registry = self._registry
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self._api is not None:
            steps.append(("client API", self._api.stop))
        if self._p2p is not None:
            steps.append(("p2p host", self._p2p.stop))
        if self._jobs is not None:
            steps.append(("job pipeline", self._jobs.stop))
        steps += [
            ("inference workers", self.models.stop),
            ("telemetry", lambda: asyncio.to_thread(self.telemetry.stop)),
        ]
        if registry is not None:
            steps.append(("model hashing", lambda: asyncio.to_thread(registry.stop)))
        if self._chain is not None:
            steps.append(("chain follower", self._chain.stop))
        for name, step in steps:
            try:
                await step()
            except Exception as exc:
                self.log("error", "node", f"stopping {name} failed: {exc}")
        self._set_state("stopped")
        self.log("info", "node", "node stopped")
        await asyncio.sleep(0)
        if self._log_task is not None:
            self._log_sub.close()
            with contextlib.suppress(asyncio.CancelledError):
                await self._log_task
        if self.store is not None:
            self.store.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _set_state(self, state: NodeState, detail: str = "") -> None:
        self.state = state
        self.bus.publish(NodeStateChanged(state=state, detail=detail))

    async def _keep_logs(self) -> None:
        async for event in self._log_sub:
            if isinstance(event, LogRecorded):
                self._logs.append(event)
            elif isinstance(event, OperatorActionRecorded):
                self._audit.append(event)

    # --- logs and audit -------------------------------------------------------------------

    def log(self, level: LogLevel, source: str, message: str) -> None:
        self.bus.publish(LogRecorded(level=level, source=source, message=message))

    def recent_logs(self) -> list[LogRecorded]:
        return list(self._logs)

    def recent_audit(self) -> list[OperatorActionRecorded]:
        return list(self._audit)

    def record_action(self, action: str, detail: str, outcome: str) -> None:
        """Every operator action leaves a durable audit line."""
        event = OperatorActionRecorded(action=action, detail=detail, outcome=outcome)
        if self.store is not None:
            self.store.append_audit(event.ts, action, detail, outcome)
        self.bus.publish(event)

    # --- commands -------------------------------------------------------------------------

    async def scan_models(self) -> list[ModelInfo]:
        models = await asyncio.to_thread(self.registry.scan)
        self.registry.start_hashing()
        return models

    def list_models(self) -> list[ModelInfo]:
        return self.registry.models()

    def loaded_models(self) -> list[LoadedModel]:
        return self.models.loaded()

    async def load_model(self, path: str | Path) -> LoadedModel:
        name = Path(path).name
        already = self.models.get(str(path))
        if already is not None:
            self.record_action("load model", name, "already loaded; nothing to do")
            return already
        try:
            model = await self.models.load(str(path))
        except LoadRefusedError as exc:
            self.record_action("load model", name, f"refused: {exc}")
            raise
        except InferenceError as exc:
            self.record_action("load model", name, f"failed: {exc}")
            raise
        self.record_action("load model", name, f"loaded in {model.load_s:.2f} s")
        return model

    async def unload_model(self, path: str | Path) -> None:
        name = Path(path).name
        try:
            await self.models.unload(str(path))
        except InferenceError as exc:
            self.record_action("unload model", name, f"failed: {exc}")
            raise
        self.record_action("unload model", name, "unloaded")

    def generate(self, path: str | Path, request: GenerationRequest) -> TokenStream:
        return self.models.generate(str(path), request)

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(
            name=self.config.node.name,
            state=self.state,
            loaded=tuple(self.models.loaded()),
            models=tuple(self._registry.models()) if self._registry else (),
            gpu=self.telemetry.latest_gpu(),
            host=self.telemetry.latest_host(),
            read_only=self.config.node.read_only,
            chain=self._chain.status if self._chain else None,
        )

    def earnings_entries(self, limit: int = 200) -> list[LedgerEntry]:
        """The ledger's newest rows (payments and withdrawals) for the Earnings screen."""
        ledger = self._chain.ledger if self._chain is not None else None
        return ledger.entries(limit) if ledger is not None else []

    # --- chain commands -------------------------------------------------------------------

    async def unlock_wallet(self, passphrase: str) -> None:
        """Unlock the node key so transactions can be signed; the audit names only the address."""
        if self._chain is None:
            raise RuntimeError("the node has not started its chain side (yet)")
        try:
            await self.chain.unlock(passphrase)
        except Exception as exc:
            self.record_action("unlock wallet", self.chain.address, f"failed: {exc}")
            raise
        self.record_action("unlock wallet", self.chain.address, "unlocked")

    def chain_status(self) -> ChainStatus | None:
        """The newest chain status, or None before the chain side exists."""
        return self._chain.status if self._chain is not None else None

    def chain_refusal(self) -> str | None:
        """Why no transaction can be signed now (read-only, no chain, locked key), or None."""
        if self._chain is None:
            return "the node has not started its chain side (yet): wait for it to run"
        return self._chain.refusal()

    async def prepare_chain_action(self, action: ChainAction) -> PreparedTx:
        """Preview an on-chain action for the confirm dialog; a refusal is audited."""
        if self._chain is None:
            raise RuntimeError("the node has not started its chain side (yet)")
        try:
            return await self.chain.prepare(action)
        except Exception as exc:
            self.record_action(describe(action), "not prepared", f"refused: {exc}")
            raise

    async def execute_chain_action(self, prepared: PreparedTx) -> TxOutcome:
        """Sign and send what the operator confirmed; the audit line carries the tx hash."""
        try:
            outcome = await self.chain.execute(prepared)
        except Exception as exc:
            self.record_action(prepared.label, prepared.preview.description, f"failed: {exc}")
            raise
        detail = f"{prepared.preview.description} tx {outcome.tx_hash}"
        verdict = "mined" if outcome.ok else f"{outcome.status}: {outcome.error}"
        self.record_action(prepared.label, detail, verdict)
        return outcome
