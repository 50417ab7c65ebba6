"""GPU sampling over an NVML-shaped source; with the real pynvml module it is the NVML backend."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from fabstir_tui.engine.events import GpuDevice, GpuSnapshot
from fabstir_tui.engine.telemetry.base import (
    NVML_CLOCK_SM,
    NVML_TEMPERATURE_GPU,
    GpuStatic,
    GpuUnavailable,
    NvmlApi,
    TelemetryEnded,
    error_name,
)

NOT_SUPPORTED = "NVMLError_NotSupported"

_Errors = list[tuple[str, str]]

# What an nvmlInit failure means, and what the operator can do about it.
_INIT_HINTS: dict[str, tuple[str, str]] = {
    "NVMLError_LibraryNotFound": (
        "the NVIDIA driver library libnvidia-ml.so is not installed",
        "Install the NVIDIA driver (nvidia-smi should then work), or set "
        'telemetry.gpu_backend = "none" to run without a GPU and without this message.',
    ),
    "NVMLError_DriverNotLoaded": (
        "the NVIDIA kernel driver is not loaded",
        "Load it (sudo modprobe nvidia) or reboot after installing the driver.",
    ),
    "NVMLError_NoPermission": (
        "this user may not open the GPU device files",
        "Run as a user allowed to use the GPU (often the 'video' group).",
    ),
    "NVMLError_LibRmVersionMismatch": (
        "the kernel driver and libnvidia-ml.so differ in version, usually after an upgrade",
        "Reboot, or reload the nvidia kernel modules.",
    ),
    "NVMLError_FunctionNotFound": (
        "the NVIDIA driver is older than these NVML bindings need",
        "Update the NVIDIA driver.",
    ),
}
_DEFAULT_HINT = ("NVML reported an error", "Check that nvidia-smi works on this machine.")


def init_failure_reason(exc: BaseException) -> str:
    """Say which NVML error stopped start-up and what to do, in the operator's words."""
    name = error_name(exc)
    hint, action = _INIT_HINTS.get(name, _DEFAULT_HINT)
    return f"NVML could not start: {name} ({hint}). {action}"


def real_nvml() -> NvmlApi:
    """The pynvml module, imported only when asked so a CPU-only node never loads it."""
    try:
        import pynvml
    except ImportError as exc:
        raise GpuUnavailable(
            "nvml",
            f"NVML could not start: the nvidia-ml-py package is missing ({exc}). "
            "Install it (pip install nvidia-ml-py).",
        ) from exc
    return cast(NvmlApi, pynvml)


# --- value checks: pynvml hands back ctypes structs and str-or-bytes --------------------------


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, str):
        return value
    raise TypeError(f"expected text, got {type(value).__name__}")


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def _cuda_version(value: object) -> str:
    """NVML gives 13000 for CUDA 13.0 (major * 1000 + minor * 10)."""
    raw = _int(value)
    return f"{raw // 1000}.{raw % 1000 // 10}"


def _process_count(api: NvmlApi, handle: Any) -> int:
    """Compute processes, plus graphics ones where the board reports them (best effort)."""
    pids = {_int(p.pid) for p in api.nvmlDeviceGetComputeRunningProcesses(handle)}
    try:
        pids |= {_int(p.pid) for p in api.nvmlDeviceGetGraphicsRunningProcesses(handle)}
    except TelemetryEnded:
        raise
    except Exception:  # graphics lists are optional on compute boards; compute is what counts
        pass
    return len(pids)


@dataclass(frozen=True, slots=True)
class _Reading:
    """One GpuDevice field and the NVML call that fills it."""

    field: str
    read: Callable[[NvmlApi, Any], object]
    slow: bool = False


_READINGS: tuple[_Reading, ...] = (
    _Reading(
        "utilisation_pct", lambda api, h: float(_int(api.nvmlDeviceGetUtilizationRates(h).gpu))
    ),
    _Reading("memory_used_bytes", lambda api, h: _int(api.nvmlDeviceGetMemoryInfo(h).used)),
    _Reading(
        "temperature_c",
        lambda api, h: float(_int(api.nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU))),
    ),
    _Reading("power_w", lambda api, h: _int(api.nvmlDeviceGetPowerUsage(h)) / 1000),
    _Reading("fan_pct", lambda api, h: float(_int(api.nvmlDeviceGetFanSpeed(h)))),
    _Reading("sm_clock_mhz", lambda api, h: _int(api.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM))),
    _Reading("processes", _process_count, slow=True),
)

_STATIC: tuple[_Reading, ...] = (
    _Reading("name", lambda api, h: _text(api.nvmlDeviceGetName(h))),
    _Reading("uuid", lambda api, h: _text(api.nvmlDeviceGetUUID(h))),
    _Reading("memory_total_bytes", lambda api, h: _int(api.nvmlDeviceGetMemoryInfo(h).total)),
    _Reading("power_limit_w", lambda api, h: _int(api.nvmlDeviceGetEnforcedPowerLimit(h)) / 1000),
)


def _read(
    reading: _Reading,
    api: NvmlApi,
    handle: Any,
    values: dict[str, Any],
    errors: list[tuple[str, str]],
) -> str | None:
    """Fill one field or record why not; returns the error name so callers can remember it."""
    try:
        values[reading.field] = reading.read(api, handle)
    except TelemetryEnded:
        raise
    except Exception as exc:  # one bad field must never hide the others
        errors.append((reading.field, error_name(exc)))
        return error_name(exc)
    return None


@dataclass(slots=True)
class _Device:
    """A device's handle, static reading, and what the sampler learnt about it so far."""

    handle: Any
    static: GpuDevice
    unsupported: set[str] = field(default_factory=set)
    slow_values: dict[str, Any] = field(default_factory=dict)
    slow_errors: list[tuple[str, str]] = field(default_factory=list)


class NvmlBackend:
    """Per-device GPU readings from an NVML-shaped source, with per-field errors."""

    def __init__(self, api: NvmlApi, name: str = "nvml") -> None:
        self.name = name
        self._api = api
        self._static: GpuStatic | None = None
        self._devices: list[_Device] = []

    def open(self) -> GpuStatic:
        """Initialise NVML and read the facts that do not change; GpuUnavailable says why not."""
        api = self._api
        try:
            api.nvmlInit()
        except TelemetryEnded:
            raise
        except Exception as exc:
            raise GpuUnavailable(self.name, init_failure_reason(exc)) from exc
        try:
            count = _int(api.nvmlDeviceGetCount())
        except TelemetryEnded:
            raise
        except Exception as exc:
            self._shutdown()
            raise GpuUnavailable(
                self.name, f"NVML started but could not count GPUs: {error_name(exc)}."
            ) from exc
        if count == 0:
            self._shutdown()
            raise GpuUnavailable(self.name, "NVML started but this machine has no NVIDIA GPU.")
        self._devices = [self._open_device(index) for index in range(count)]
        self._static = GpuStatic(
            backend=self.name,
            driver_version=self._optional(lambda: _text(api.nvmlSystemGetDriverVersion())),
            cuda_version=self._optional(
                lambda: _cuda_version(api.nvmlSystemGetCudaDriverVersion_v2())
            ),
            nvml_version=self._optional(lambda: _text(api.nvmlSystemGetNVMLVersion())),
            devices=tuple(d.static for d in self._devices),
        )
        return self._static

    def sample(self, *, slow: bool) -> GpuSnapshot:
        """Read every device; a field that fails is None with its error, the rest stand."""
        if self._static is None:
            raise RuntimeError("sample() before a successful open()")
        return dataclasses.replace(
            self._static.snapshot(), devices=tuple(self._sample(d, slow) for d in self._devices)
        )

    def close(self) -> None:
        """Shut NVML down; safe to call twice or after a failed open."""
        if self._static is not None:
            self._static = None
            self._devices = []
            self._shutdown()

    def _open_device(self, index: int) -> _Device:
        api = self._api
        try:
            handle = api.nvmlDeviceGetHandleByIndex(index)
        except TelemetryEnded:
            raise
        except Exception as exc:  # a lost GPU still shows, with why it is blank
            return _Device(
                None, GpuDevice(index, f"GPU {index}", errors=(("handle", error_name(exc)),))
            )
        values: dict[str, Any] = {}
        errors: list[tuple[str, str]] = []
        for reading in _STATIC:
            _read(reading, api, handle, values, errors)
        values.setdefault("name", f"GPU {index}")
        return _Device(handle, GpuDevice(index=index, errors=tuple(errors), **values))

    def _sample(self, device: _Device, slow: bool) -> GpuDevice:
        if device.handle is None:
            return device.static
        values: dict[str, Any] = {}
        errors: list[tuple[str, str]] = list(device.static.errors)
        slow_values: dict[str, Any] = {}
        slow_errors: list[tuple[str, str]] = []
        for reading in _READINGS:
            if reading.slow and not slow:
                continue
            into, errs = (slow_values, slow_errors) if reading.slow else (values, errors)
            if reading.field in device.unsupported:  # NotSupported is a property of the board
                errs.append((reading.field, NOT_SUPPORTED))
                continue
            if _read(reading, self._api, device.handle, into, errs) == NOT_SUPPORTED:
                device.unsupported.add(reading.field)
        if slow:
            device.slow_values, device.slow_errors = slow_values, slow_errors
        values.update(device.slow_values)
        errors.extend(device.slow_errors)
        return dataclasses.replace(device.static, errors=tuple(errors), **values)

    def _optional(self, read: Callable[[], str]) -> str | None:
        try:
            return read()
        except TelemetryEnded:
            raise
        except Exception:  # a missing version string is not worth failing start-up over
            return None

    def _shutdown(self) -> None:
        with contextlib.suppress(Exception):  # nothing to do if NVML fails to let go
            self._api.nvmlShutdown()
