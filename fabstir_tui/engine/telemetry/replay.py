"""Recorded NVML readings played back: the named test double for GPUs this machine lacks.

ReplayNvml answers the calls pynvml would get (function name + arguments) with the recording's
answers to that same call, in recorded order, so the real sampler runs unchanged over it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

from fabstir_tui.engine.telemetry.base import TelemetryEnded

# Phases the recorder writes outside its sampling loop (tools/record_nvml.py).
_ONCE_PHASES = frozenset({"static", "end"})


class ReplayFileError(ValueError):
    """The recording cannot be read or is not in the recorder's format; says which line."""


class ReplayEnded(TelemetryEnded):
    """A replay that does not loop has played every recorded reading."""


class ReplayedNvmlError(Exception):
    """A recorded NVML failure; subclasses carry the recorded name (NVMLError_NotSupported)."""

    value: int | None = None


class NotInRecording(ReplayedNvmlError):
    """The sampler asked for a call the recording never made (a newer field, another GPU)."""


_error_classes: dict[str, type[ReplayedNvmlError]] = {}


def _raise_recorded(name: str, code: int | None) -> NoReturn:
    """Raise an exception named as recorded, so error names match what real NVML gives."""
    cls = _error_classes.get(name)
    if cls is None:
        cls = _error_classes[name] = type(name, (ReplayedNvmlError,), {})
    exc = cls(name)
    exc.value = code
    raise exc


@dataclass(frozen=True, slots=True)
class ReplayHandle:
    """A device handle; `label` is how the recorder wrote the device in args ("gpu0")."""

    label: str


@dataclass(frozen=True, slots=True)
class _Answer:
    phase: str
    ok: Any
    err: tuple[str, int | None] | None


def _decode(value: Any) -> Any:
    """Turn the recorder's {"_struct": ...} and {"_object": ...} back into attribute objects."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict) and ("_struct" in value or "_object" in value):
        return SimpleNamespace(
            **{k: _decode(v) for k, v in value.items() if k not in ("_struct", "_object")}
        )
    return value


def _key(fn: str, args: list[Any] | tuple[Any, ...]) -> str:
    plain = [a.label if isinstance(a, ReplayHandle) else a for a in args]
    return fn + json.dumps(plain)


def _parse_line(path: Path, number: int, line: str) -> tuple[str, _Answer]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ReplayFileError(
            f"{path}: line {number} is not valid JSON ({exc.msg}, column {exc.colno})"
        ) from exc
    bad = ReplayFileError(
        f"{path}: line {number} is not a recorded NVML call "
        "(needs fn, args, and ok or err with a name)"
    )
    if not isinstance(rec, dict) or not isinstance(rec.get("fn"), str):
        raise bad
    args, err = rec.get("args"), rec.get("err")
    if not isinstance(args, list) or ("ok" not in rec and not isinstance(err, dict)):
        raise bad
    error: tuple[str, int | None] | None = None
    if isinstance(err, dict):
        name, code = err.get("name"), err.get("code")
        if not isinstance(name, str) or not (code is None or isinstance(code, int)):
            raise bad
        error = (name, code)
    phase = rec.get("phase")
    answer = _Answer(str(phase) if phase is not None else "", _decode(rec.get("ok")), error)
    return _key(rec["fn"], args), answer


@dataclass(frozen=True, slots=True)
class Recording:
    """A recording split into its once-only calls and its samples (one dict per sample)."""

    once: dict[str, _Answer]
    samples: list[dict[str, _Answer]]
    phases: list[str]

    @property
    def sampled_keys(self) -> frozenset[str]:
        return frozenset(k for sample in self.samples for k in sample)


def load_recording(path: Path) -> Recording:
    """Read a whole recording up front, so a bad file fails at open with its line number.

    A sample ends where a call repeats (the recorder asks each field once per sample) or the
    phase changes; the static facts and the final shutdown are kept apart as once-only calls.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayFileError(f"cannot read the NVML recording {path}: {exc}") from exc
    once: dict[str, _Answer] = {}
    samples: list[dict[str, _Answer]] = []
    phases: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, answer = _parse_line(path, number, line)
        if answer.phase in _ONCE_PHASES:
            once.setdefault(key, answer)
        else:
            if not samples or key in samples[-1] or phases[-1] != answer.phase:
                samples.append({})
                phases.append(answer.phase)
            samples[-1][key] = answer
    if not once and not samples:
        raise ReplayFileError(f"{path}: the NVML recording holds no calls")
    return Recording(once, samples, phases)


class ReplayNvml:
    """Answers pynvml's calls from a recording, one recorded sample per sampler tick.

    A tick ends when the sampler asks a call it already asked in this tick; a field it asks
    less often than the recorder did gets the value of the current sample, or the nearest
    earlier one that has it, so every field stays on the recording's timeline. At the end the
    replay loops back to the first sample, or raises ReplayEnded.
    """

    def __init__(self, path: Path, *, loop: bool = True) -> None:
        self.path = path
        self.loop = loop
        self.loops = 0
        self._rec = load_recording(path)
        self._sampled = self._rec.sampled_keys
        self._tick = -1  # -1: still answering the static facts
        self._asked: set[str] = set()
        self._lock = threading.Lock()

    @property
    def phase(self) -> str:
        """The recorder's phase of the sample being answered ("static", "idle", "busy")."""
        with self._lock:
            return "static" if self._tick < 0 else self._rec.phases[self._tick]

    def call(self, fn: str, *args: Any) -> Any:
        """The recording's answer to `fn(*args)` now: its value, or its error raised."""
        key = _key(fn, args)
        with self._lock:
            answer = self._answer(key)
        if answer.err is not None:
            _raise_recorded(*answer.err)
        return answer.ok

    def _answer(self, key: str) -> _Answer:
        once = self._rec.once.get(key)
        if key not in self._sampled:
            if once is None:
                raise NotInRecording(f"{key} is not in {self.path.name}")
            return once
        if key in self._asked or (self._tick < 0 and once is None):
            self._advance()
        self._asked.add(key)
        if self._tick < 0 and once is not None:
            return once
        return self._nearest(key)

    def _advance(self) -> None:
        if self._tick + 1 < len(self._rec.samples):
            self._tick += 1
        elif self.loop:
            self._tick = 0
            self.loops += 1
        else:
            raise ReplayEnded(f"the GPU replay {self.path.name} has played to its end")
        self._asked = set()

    def _nearest(self, key: str) -> _Answer:
        samples = self._rec.samples
        for tick in chain(range(self._tick, -1, -1), range(self._tick + 1, len(samples))):
            answer = samples[tick].get(key)
            if answer is not None:
                return answer
        raise AssertionError(f"{key} is in no sample")  # unreachable: key is in _sampled

    # --- the NVML-shaped surface (base.NvmlApi) ---------------------------------------------

    def nvmlInit(self) -> Any:
        return self.call("nvmlInit")

    def nvmlShutdown(self) -> Any:
        return self.call("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self) -> Any:
        return self.call("nvmlSystemGetDriverVersion")

    def nvmlSystemGetNVMLVersion(self) -> Any:
        return self.call("nvmlSystemGetNVMLVersion")

    def nvmlSystemGetCudaDriverVersion_v2(self) -> Any:
        return self.call("nvmlSystemGetCudaDriverVersion_v2")

    def nvmlDeviceGetCount(self) -> Any:
        return self.call("nvmlDeviceGetCount")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self.call("nvmlDeviceGetHandleByIndex", index)  # raises when the recording failed here
        return ReplayHandle(f"gpu{index}")

    def nvmlDeviceGetName(self, handle: Any) -> Any:
        return self.call("nvmlDeviceGetName", handle)

    def nvmlDeviceGetUUID(self, handle: Any) -> Any:
        return self.call("nvmlDeviceGetUUID", handle)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return self.call("nvmlDeviceGetMemoryInfo", handle)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> Any:
        return self.call("nvmlDeviceGetEnforcedPowerLimit", handle)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        return self.call("nvmlDeviceGetUtilizationRates", handle)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> Any:
        return self.call("nvmlDeviceGetTemperature", handle, sensor)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> Any:
        return self.call("nvmlDeviceGetPowerUsage", handle)

    def nvmlDeviceGetFanSpeed(self, handle: Any) -> Any:
        return self.call("nvmlDeviceGetFanSpeed", handle)

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> Any:
        return self.call("nvmlDeviceGetClockInfo", handle, clock_type)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Any:
        return self.call("nvmlDeviceGetComputeRunningProcesses", handle)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> Any:
        return self.call("nvmlDeviceGetGraphicsRunningProcesses", handle)
