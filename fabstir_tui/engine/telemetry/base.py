"""The contracts shared by every GPU source, so one sampler drives real NVML and a replay alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fabstir_tui.engine.events import GpuDevice, GpuSnapshot

# NVML enum values (nvml.h); copied so the sampler needs no pynvml import to name them.
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1


class GpuUnavailable(Exception):
    """There is no GPU to sample; `reason` tells the operator why and what to do about it."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(reason)
        self.backend = backend
        self.reason = reason

    def snapshot(self) -> GpuSnapshot:
        """The no-GPU state the UI shows instead of panels full of zeros."""
        return GpuSnapshot(available=False, backend=self.backend, reason=self.reason)


class TelemetryEnded(Exception):
    """The source has no more readings (a replay played to its end): stop, do not retry."""


@dataclass(frozen=True, slots=True)
class GpuStatic:
    """Facts read once at open: they hold while the driver stays loaded."""

    backend: str
    driver_version: str | None
    cuda_version: str | None
    nvml_version: str | None
    devices: tuple[GpuDevice, ...]

    def snapshot(self) -> GpuSnapshot:
        """The static facts as a snapshot, for `doctor` and for the first frame of the UI."""
        return GpuSnapshot(
            available=True,
            backend=self.backend,
            driver_version=self.driver_version,
            cuda_version=self.cuda_version,
            devices=self.devices,
        )


class GpuBackend(Protocol):
    """A GPU source the telemetry service can open, sample on its thread and close."""

    @property
    def name(self) -> str: ...

    def open(self) -> GpuStatic:
        """Start the source and read static facts; raises GpuUnavailable with the reason."""
        ...

    def sample(self, *, slow: bool) -> GpuSnapshot:
        """Read every device; `slow` also reads the costly fields (process lists)."""
        ...

    def close(self) -> None: ...


class NvmlApi(Protocol):
    """The slice of pynvml the sampler calls; the pynvml module and ReplayNvml both fit.

    Values are `Any` because pynvml returns ctypes structs and str-or-bytes; the sampler checks
    each one and turns a bad shape into a per-field error.
    """

    def nvmlInit(self) -> Any: ...
    def nvmlShutdown(self) -> Any: ...
    def nvmlSystemGetDriverVersion(self) -> Any: ...
    def nvmlSystemGetNVMLVersion(self) -> Any: ...
    def nvmlSystemGetCudaDriverVersion_v2(self) -> Any: ...
    def nvmlDeviceGetCount(self) -> Any: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> Any: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> Any: ...
    def nvmlDeviceGetFanSpeed(self, handle: Any) -> Any: ...
    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> Any: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Any: ...
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> Any: ...


def error_name(exc: BaseException) -> str:
    """The NVML error's class name (NVMLError_NotSupported), the same for real and replayed."""
    return type(exc).__name__
