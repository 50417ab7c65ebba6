"""GPU (NVML, replay, none) and host (psutil) telemetry, sampled off the event loop."""

from fabstir_tui.engine.telemetry.base import (
    GpuBackend,
    GpuStatic,
    GpuUnavailable,
    NvmlApi,
    TelemetryEnded,
)
from fabstir_tui.engine.telemetry.host import HostSampler
from fabstir_tui.engine.telemetry.nvml import NvmlBackend, init_failure_reason, real_nvml
from fabstir_tui.engine.telemetry.replay import ReplayEnded, ReplayFileError, ReplayNvml
from fabstir_tui.engine.telemetry.service import TelemetryService, make_gpu_backend, probe_gpu

__all__ = [
    "GpuBackend",
    "GpuStatic",
    "GpuUnavailable",
    "HostSampler",
    "NvmlApi",
    "NvmlBackend",
    "ReplayEnded",
    "ReplayFileError",
    "ReplayNvml",
    "TelemetryEnded",
    "TelemetryService",
    "init_failure_reason",
    "make_gpu_backend",
    "probe_gpu",
    "real_nvml",
]
