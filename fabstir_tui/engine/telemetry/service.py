"""GPU and host sampling on a daemon thread, so a slow NVML call never blocks the event loop."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from pathlib import Path

from fabstir_tui.config import TelemetrySection
from fabstir_tui.engine.events import (
    Event,
    EventBus,
    GpuDevice,
    GpuSampled,
    GpuSnapshot,
    HostSampled,
    HostSnapshot,
    LogLevel,
    LogRecorded,
)
from fabstir_tui.engine.telemetry.base import (
    GpuBackend,
    GpuUnavailable,
    TelemetryEnded,
    error_name,
)
from fabstir_tui.engine.telemetry.host import HostSampler
from fabstir_tui.engine.telemetry.nvml import NvmlBackend, real_nvml
from fabstir_tui.engine.telemetry.replay import ReplayFileError, ReplayNvml


def make_gpu_backend(config: TelemetrySection, *, replay_loop: bool = True) -> GpuBackend:
    """The backend `config` asks for; GpuUnavailable when that choice cannot give one."""
    if config.gpu_backend == "none":
        raise GpuUnavailable("none", 'GPU telemetry is off (telemetry.gpu_backend = "none").')
    if config.gpu_backend == "replay":
        if config.replay_file is None:
            raise GpuUnavailable(
                "replay",
                'telemetry.gpu_backend is "replay" but telemetry.replay_file is not set.',
            )
        try:
            return NvmlBackend(ReplayNvml(config.replay_file, loop=replay_loop), name="replay")
        except ReplayFileError as exc:
            raise GpuUnavailable("replay", f"GPU replay could not start: {exc}") from exc
    return NvmlBackend(real_nvml(), name="nvml")


def probe_gpu(config: TelemetrySection | None = None) -> GpuSnapshot:
    """One look at the GPU for `doctor`: start NVML, read the static facts, shut it down."""
    config = config if config is not None else TelemetrySection()
    try:
        backend = make_gpu_backend(config, replay_loop=False)
        try:
            return backend.open().snapshot()
        finally:
            backend.close()
    except GpuUnavailable as exc:
        return exc.snapshot()
    except Exception as exc:  # doctor reports, it does not crash
        return GpuSnapshot(
            available=False,
            backend=config.gpu_backend,
            reason=f"GPU probe failed: {error_name(exc)}: {exc}",
        )


class TelemetryService:
    """Samples on its own thread and publishes GpuSampled / HostSampled on the bus.

    The bus must be bound to the loop (`EventBus.bind`) for the events to arrive; the latest
    readings and per-device history can also be read directly from any thread.
    """

    def __init__(
        self,
        config: TelemetrySection,
        bus: EventBus,
        disk_path: Path,
        *,
        replay_loop: bool = True,
    ) -> None:
        self._config = config
        self._bus = bus
        self._disk_path = disk_path
        self._replay_loop = replay_loop
        self._lock = threading.Lock()
        self._latest_gpu: GpuSnapshot | None = None
        self._latest_host: HostSnapshot | None = None
        self._history: dict[int, deque[GpuDevice]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sampler thread; GPU start-up happens there too (nvmlInit can be slow)."""
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="fabstir-telemetry", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Wake the sampler and wait for it; it ends at once unless inside an NVML call."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._publish(
                    LogRecorded(
                        level="warning",
                        source="telemetry",
                        message=f"telemetry thread still inside a GPU call after {timeout:.1f} s",
                    )
                )

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- readings -------------------------------------------------------------------------

    def latest_gpu(self) -> GpuSnapshot | None:
        with self._lock:
            return self._latest_gpu

    def latest_host(self) -> HostSnapshot | None:
        with self._lock:
            return self._latest_host

    def history(self, device_index: int) -> list[GpuDevice]:
        """The device's last `config.history` readings, oldest first, for sparklines."""
        with self._lock:
            return list(self._history.get(device_index, ()))

    # --- the thread -----------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        host = HostSampler(self._disk_path)
        backend = self._open_gpu()
        next_slow = time.monotonic()
        try:
            while not stop.is_set():
                started = time.monotonic()
                if backend is not None:
                    slow = started >= next_slow
                    if slow:
                        next_slow = started + self._config.slow_interval_s
                    backend = self._sample_gpu(backend, slow)
                self._sample_host(host)
                elapsed = time.monotonic() - started
                stop.wait(max(0.0, self._config.interval_s - elapsed))
        finally:
            if backend is not None:
                backend.close()

    def _open_gpu(self) -> GpuBackend | None:
        try:
            backend = make_gpu_backend(self._config, replay_loop=self._replay_loop)
            backend.open()
        except GpuUnavailable as exc:
            quiet = self._config.gpu_backend in ("auto", "none")
            self._gpu_gone(exc.snapshot(), "info" if quiet else "warning")
            return None
        except Exception as exc:  # the sampler thread must survive any start-up failure
            reason = f"GPU telemetry could not start: {error_name(exc)}: {exc}"
            self._gpu_gone(GpuSnapshot(False, self._config.gpu_backend, reason), "error")
            return None
        return backend

    def _sample_gpu(self, backend: GpuBackend, slow: bool) -> GpuBackend | None:
        level: LogLevel
        try:
            snapshot = backend.sample(slow=slow)
        except TelemetryEnded as exc:
            reason, level = str(exc), "info"
        except Exception as exc:  # a structural failure: report it and keep host sampling
            reason, level = f"GPU sampling stopped: {error_name(exc)}: {exc}", "error"
        else:
            with self._lock:
                self._latest_gpu = snapshot
                for device in snapshot.devices:
                    self._device_history(device.index).append(device)
            self._publish(GpuSampled(snapshot))
            return backend
        backend.close()
        self._gpu_gone(GpuSnapshot(available=False, backend=backend.name, reason=reason), level)
        return None

    def _sample_host(self, host: HostSampler) -> None:
        try:
            snapshot = host.sample()
        except Exception as exc:  # psutil can fail on odd mounts; the next tick may work
            self._publish(
                LogRecorded(level="warning", source="telemetry", message=f"host sampling: {exc}")
            )
            return
        with self._lock:
            self._latest_host = snapshot
        self._publish(HostSampled(snapshot))

    def _device_history(self, index: int) -> deque[GpuDevice]:
        history = self._history.get(index)
        if history is None:
            history = self._history[index] = deque(maxlen=self._config.history)
        return history

    def _gpu_gone(self, snapshot: GpuSnapshot, level: LogLevel) -> None:
        with self._lock:
            self._latest_gpu = snapshot
        self._publish(GpuSampled(snapshot))
        self._publish(LogRecorded(level=level, source="telemetry", message=snapshot.reason or ""))

    def _publish(self, event: Event) -> None:
        # The loop may close between the bus's check and the hand-over.
        with contextlib.suppress(RuntimeError):
            self._bus.publish_threadsafe(event)
