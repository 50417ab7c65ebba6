"""Loaded models: one worker each, checked before spawning, reported on the bus when they die."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from pathlib import Path

import psutil

from fabstir_tui.config import InferenceSection
from fabstir_tui.engine.events import (
    EventBus,
    GenerationFailed,
    GenerationFinished,
    GenerationStarted,
    LoadedModel,
    LogLevel,
    LogRecorded,
    ModelLoaded,
    ModelLoadFailed,
    ModelLoadProgress,
    ModelUnloaded,
    ModelWorkerDied,
)
from fabstir_tui.engine.inference.gguf_meta import GgufError, GgufInfo, read_gguf
from fabstir_tui.engine.inference.registry import model_key
from fabstir_tui.engine.inference.slots import SlotQueue
from fabstir_tui.engine.inference.stream import (
    GenerationRequest,
    InferenceError,
    LoadRefusedError,
    TokenStream,
)
from fabstir_tui.engine.inference.worker_process import UNLOADED, LoadSettings, WorkerProcess

GIB = 1024**3


def default_threads() -> int:
    """Physical cores: hyper-threads slow llama.cpp's decode down rather than up."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def estimate_memory_bytes(info: GgufInfo, n_ctx: int) -> int:
    """Weights plus an f16 KV cache for the context: what loading will need on the CPU side."""
    meta = info.metadata
    arch = info.architecture or ""
    layers = int(meta.get(f"{arch}.block_count", 0) or 0)
    embd = int(meta.get(f"{arch}.embedding_length", 0) or 0)
    heads = int(meta.get(f"{arch}.attention.head_count", 0) or 0)
    heads_kv = int(meta.get(f"{arch}.attention.head_count_kv", heads) or heads)
    kv = 0
    if layers and embd and heads:
        kv = 2 * 2 * n_ctx * layers * (embd * heads_kv // heads)
    return info.file_size + kv


class ModelManager:
    """Owns the worker processes; the node calls it, the UI never does."""

    def __init__(self, config: InferenceSection, bus: EventBus) -> None:
        self.config = config
        self.bus = bus
        self._workers: dict[str, WorkerProcess] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()
        self._starting: dict[str, WorkerProcess] = {}
        self._closed = False
        self._speeds: dict[str, deque[float]] = {}
        self._slots: dict[str, SlotQueue] = {}
        self.gpu_offload: bool | None = None

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def loading(self) -> list[str]:
        """Paths of models being loaded right now (the API's /health says it is not ready)."""
        return sorted(self._loading)

    def get(self, path: str) -> LoadedModel | None:
        return self._loaded.get(model_key(path))

    def _log(self, level: LogLevel, message: str) -> None:
        self.bus.publish(LogRecorded(level=level, source="inference", message=message))

    def check(self, path: str) -> GgufInfo:
        """Refuse files llama.cpp would choke on, and loads that cannot fit, before spawning."""
        try:
            info = read_gguf(Path(path))
        except GgufError as exc:
            raise InferenceError(str(exc)) from exc
        # Batched slots each keep a whole context's KV cache.
        need = estimate_memory_bytes(info, self.config.context_length * self.config.slots)
        free = psutil.virtual_memory().available
        on_cpu = self.config.n_gpu_layers == 0 or not self.gpu_offload
        if on_cpu and need > free:
            raise InferenceError(
                f"not enough memory to load {Path(path).name}: it needs about "
                f"{need / GIB:.1f} GiB but {free / GIB:.1f} GiB is free; close other "
                "programs, lower inference.context_length or pick a smaller quantisation"
            )
        return info

    async def load(self, path: str) -> LoadedModel:
        """Start a worker for `path` and load it; every failure is an event and an exception."""
        path = model_key(path)
        if path in self._loaded:
            return self._loaded[path]
        # Refusals, not failed loads: no ModelLoadFailed event for these.
        if self._closed:
            raise LoadRefusedError("the node is stopping; it takes no new models")
        if path in self._loading:
            raise LoadRefusedError(f"{Path(path).name} is already loading")
        self._loading.add(path)
        try:
            return await self._load(path)
        except InferenceError as exc:
            self.bus.publish(ModelLoadFailed(path=path, reason=str(exc)))
            self._log("error", f"load failed: {exc}")
            raise
        finally:
            self._loading.discard(path)

    async def _load(self, path: str) -> LoadedModel:
        def progress(stage: str, fraction: float) -> None:
            self.bus.publish(ModelLoadProgress(path=path, stage=stage, fraction=fraction))

        progress("checking the file", 0.01)
        info = await asyncio.to_thread(self.check, path)
        threads = self.config.threads or default_threads()
        settings = LoadSettings(
            path=path,
            n_ctx=min(
                self.config.context_length, info.context_length or self.config.context_length
            ),
            n_batch=self.config.batch_size,
            n_threads=threads,
            n_gpu_layers=self.config.n_gpu_layers,
            main_gpu=self.config.main_gpu,
            seed=self.config.seed,
            slots=self.config.slots,
            flash_attn=self.config.flash_attention,
        )
        worker = WorkerProcess(path, self._worker_log, self._worker_exited)
        self._starting[path] = worker
        try:
            loaded = await asyncio.wait_for(
                worker.start(settings, progress), self.config.load_timeout_s
            )
        except TimeoutError as exc:
            await worker.stop(timeout_s=1)
            raise InferenceError(
                f"loading {Path(path).name} took longer than {self.config.load_timeout_s:.0f} s; "
                "raise inference.load_timeout_s or check the disk"
            ) from exc
        except InferenceError as exc:
            if self._closed:
                raise InferenceError(
                    f"the node stopped while {Path(path).name} was loading"
                ) from exc
            raise InferenceError(f"cannot load {Path(path).name}: {exc}") from exc
        finally:
            self._starting.pop(path, None)
        if self._closed:
            await worker.stop()
            raise InferenceError(f"the node stopped while {Path(path).name} was loading")
        self.gpu_offload = loaded.gpu_offload
        model = LoadedModel(
            path=path,
            name=info.name,
            worker_pid=worker.pid or 0,
            n_ctx=loaded.n_ctx,
            n_threads=loaded.n_threads,
            n_gpu_layers=loaded.n_gpu_layers if loaded.gpu_offload else 0,
            gpu_offload=loaded.gpu_offload,
            load_s=loaded.load_s,
            chat_format=loaded.chat_format,
        )
        self._workers[path] = worker
        self._loaded[path] = model
        progress("ready", 1.0)
        self.bus.publish(ModelLoaded(model=model))
        self._log("info", f"loaded {model.name} in {loaded.load_s:.2f} s (pid {model.worker_pid})")
        return model

    def _worker_log(self, level: str, text: str) -> None:
        lvl: LogLevel = level if level in ("debug", "info", "warning", "error") else "debug"  # type: ignore[assignment]
        self.bus.publish(LogRecorded(level=lvl, source="llama.cpp", message=text))

    def _worker_exited(self, worker: WorkerProcess, reason: str) -> None:
        path = worker.path
        if self._workers.get(path) is worker:
            del self._workers[path]
            self._loaded.pop(path, None)
        if reason != UNLOADED:
            self.bus.publish(ModelWorkerDied(path=path, reason=reason, exit_code=worker.returncode))
            self._log("error", reason + "; load the model again to restart it")

    async def unload(self, path: str) -> None:
        path = model_key(path)
        worker = self._workers.pop(path, None)
        self._loaded.pop(path, None)
        if worker is None:
            raise InferenceError(f"{Path(path).name} is not loaded")
        await worker.stop()
        self.bus.publish(ModelUnloaded(path=path))
        self._log("info", f"unloaded {Path(path).name}; its worker (pid {worker.pid}) has exited")

    def generate(self, path: str, request: GenerationRequest) -> TokenStream:
        """Start a generation; the stream's end is reported on the bus for the dashboard."""
        path = model_key(path)
        worker = self._workers.get(path)
        if worker is None:
            raise InferenceError(f"{Path(path).name} is not loaded; load it first")
        stream = worker.generate(request)
        self.bus.publish(GenerationStarted(request_id=stream.request_id, model_path=path))
        stream.on_end = lambda s: self._report(path, s)
        return stream

    def _report(self, path: str, stream: TokenStream) -> None:
        if stream.error is not None:
            self.bus.publish(
                GenerationFailed(
                    request_id=stream.request_id, model_path=path, reason=str(stream.error)
                )
            )
            return
        st = stream.stats
        if st.tokens_per_s and st.completion_tokens >= 8:  # short runs measure mostly prefill
            self._speeds.setdefault(path, deque(maxlen=16)).append(st.tokens_per_s)
        self.bus.publish(
            GenerationFinished(
                request_id=stream.request_id,
                model_path=path,
                prompt_tokens=st.prompt_tokens,
                completion_tokens=st.completion_tokens,
                finish_reason=st.finish_reason,
                ttft_s=st.ttft_s,
                tokens_per_s=st.tokens_per_s,
            )
        )

    def slot_queue(self, path: str) -> SlotQueue:
        """The model's inference slots (inference.slots) and the requests waiting for them."""
        key = model_key(path)
        queue = self._slots.get(key)
        if queue is None:
            queue = self._slots[key] = SlotQueue(self.config.slots)
        return queue

    def slot_totals(self) -> tuple[int, int, int]:
        """(slots, busy, waiting) over the loaded models: the capacity a node announces."""
        queues = [self.slot_queue(m.path) for m in self.loaded()]
        return (
            sum(q.capacity for q in queues),
            sum(q.busy for q in queues),
            sum(q.waiting for q in queues),
        )

    def tokens_per_s(self, path: str) -> float | None:
        """Median decode speed of the model's recent generations (what a quote's run time
        is worked out from); None before one was measured."""
        speeds = sorted(self._speeds.get(model_key(path), ()))
        return speeds[len(speeds) // 2] if speeds else None

    async def stop(self) -> None:
        """Stop every worker, including ones still loading; no load is accepted after this."""
        self._closed = True
        for worker in list(self._starting.values()):
            await worker.stop(timeout_s=2)
        for path in list(self._workers):
            await self.unload(path)
