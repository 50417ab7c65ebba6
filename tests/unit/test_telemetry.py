"""Telemetry: real NVML where it can run, recorded H200 readings (the named test double) where
this machine has no GPU, real psutil, a real EventBus on a real loop."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fabstir_tui.config import TelemetrySection
from fabstir_tui.engine.events import (
    Event,
    EventBus,
    GpuSampled,
    GpuSnapshot,
    HostSampled,
    LogRecorded,
    Subscription,
)
from fabstir_tui.engine.telemetry import (
    GpuUnavailable,
    HostSampler,
    NvmlBackend,
    ReplayEnded,
    ReplayFileError,
    ReplayNvml,
    TelemetryService,
    make_gpu_backend,
    probe_gpu,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nvml"
H200 = FIXTURES / "h200-idle-then-busy.jsonl"
NO_DRIVER = FIXTURES / "no-driver.jsonl"
H200_SAMPLES = 40  # 20 idle + 20 busy in the recording


def _replay_config(
    path: Path, interval_s: float = 1.0, slow_interval_s: float = 30.0, history: int = 120
) -> TelemetrySection:
    return TelemetrySection(
        gpu_backend="replay",
        replay_file=path,
        interval_s=interval_s,
        slow_interval_s=slow_interval_s,
        history=history,
    )


def _derived(tmp_path: Path, edit: Callable[[dict[str, object]], dict[str, object] | None]) -> Path:
    """The H200 recording with some calls edited or dropped, for failure cases it lacks."""
    out = tmp_path / "derived.jsonl"
    lines = []
    for line in H200.read_text().splitlines():
        rec = edit(json.loads(line))
        if rec is not None:
            lines.append(json.dumps(rec))
    out.write_text("\n".join(lines) + "\n")
    return out


async def _collect(
    sub: Subscription, done: Callable[[list[Event]], bool], limit: int = 2000
) -> list[Event]:
    """Read events until `done` holds; the timeout only turns a hang into a failure."""
    events: list[Event] = []
    while not done(events):
        assert len(events) < limit, f"condition not met after {limit} events"
        events.append(await asyncio.wait_for(sub.get(), timeout=20))
    return events


def _count(kind: type[Event]) -> Callable[[list[Event]], int]:
    return lambda events: sum(isinstance(e, kind) for e in events)


# --- replay through the real sampler ----------------------------------------------------------


def test_replay_reads_the_h200_static_facts() -> None:
    backend = NvmlBackend(ReplayNvml(H200), name="replay")
    static = backend.open()
    backend.close()
    assert static.driver_version == "580.159.04"
    assert static.cuda_version == "13.0"
    assert static.nvml_version == "13.580.159.04"
    (gpu,) = static.devices
    assert gpu.name == "NVIDIA H200"
    assert gpu.uuid == "GPU-3f34e549-4185-3d79-a6e7-680bbf681222"
    assert gpu.memory_total_bytes == 150_754_820_096
    assert gpu.power_limit_w == 700.0
    assert static.snapshot().available


def test_replay_goes_from_idle_to_busy_with_per_field_errors() -> None:
    replay = ReplayNvml(H200, loop=False)
    backend = NvmlBackend(replay, name="replay")
    backend.open()
    by_phase: dict[str, list[GpuSnapshot]] = {"idle": [], "busy": []}
    with pytest.raises(ReplayEnded):
        for _ in range(H200_SAMPLES + 1):
            snapshot = backend.sample(slow=True)
            by_phase[replay.phase].append(snapshot)
    backend.close()
    assert len(by_phase["idle"]) == 20 and len(by_phase["busy"]) == 20

    idle = [s.devices[0] for s in by_phase["idle"]]
    busy = [s.devices[0] for s in by_phase["busy"][-10:]]  # the load is up by then
    assert all(d.utilisation_pct is not None and d.utilisation_pct <= 1 for d in idle)
    assert all(d.utilisation_pct is not None and 99 <= d.utilisation_pct <= 100 for d in busy)
    assert all(d.power_w is not None and 670 <= d.power_w <= 700 for d in busy)
    assert all(d.power_w is not None and d.power_w < 100 for d in idle)
    assert all(d.processes == 0 for d in idle) and all(d.processes == 1 for d in busy)
    for snapshot in by_phase["idle"] + by_phase["busy"]:
        assert snapshot.available and snapshot.backend == "replay"
        assert snapshot.driver_version == "580.159.04"
        gpu = snapshot.devices[0]
        assert gpu.name == "NVIDIA H200"
        assert gpu.fan_pct is None
        assert gpu.errors == (("fan_pct", "NVMLError_NotSupported"),)
        # The unsupported fan hides nothing else.
        assert gpu.memory_total_bytes == 150_754_820_096
        assert gpu.memory_used_bytes is not None
        assert 0 < gpu.memory_used_bytes < gpu.memory_total_bytes
        assert gpu.temperature_c is not None and 20 < gpu.temperature_c < 95
        assert gpu.sm_clock_mhz is not None and gpu.sm_clock_mhz > 0
        assert gpu.power_limit_w == 700.0


def test_slow_fields_keep_their_last_reading_between_slow_samples() -> None:
    replay = ReplayNvml(H200)
    backend = NvmlBackend(replay, name="replay")
    backend.open()
    first = backend.sample(slow=True).devices[0]  # idle: no process yet
    while replay.phase != "busy":
        assert backend.sample(slow=False).devices[0].processes == first.processes == 0
    for _ in range(5):
        backend.sample(slow=False)
    assert backend.sample(slow=False).devices[0].processes == 0  # not asked again yet
    assert backend.sample(slow=True).devices[0].processes == 1
    backend.close()


def test_replay_loops_back_to_the_first_sample() -> None:
    replay = ReplayNvml(H200, loop=True)
    backend = NvmlBackend(replay, name="replay")
    backend.open()
    readings = [backend.sample(slow=True).devices[0] for _ in range(H200_SAMPLES + 2)]
    backend.close()
    assert replay.loops == 1 and replay.phase == "idle"
    assert readings[H200_SAMPLES - 1].utilisation_pct == 99.0
    assert readings[H200_SAMPLES].power_w == readings[0].power_w
    assert readings[H200_SAMPLES + 1].power_w == readings[1].power_w


def test_a_failing_field_is_none_with_its_error_and_the_rest_stand(tmp_path: Path) -> None:
    def edit(rec: dict[str, object]) -> dict[str, object] | None:
        if rec["fn"] == "nvmlDeviceGetEnforcedPowerLimit":
            return None  # an older recording without this call
        if rec["fn"] == "nvmlDeviceGetPowerUsage" and rec["phase"] == "busy":
            rec.pop("ok")
            rec["err"] = {"name": "NVMLError_GpuIsLost", "code": 15}
        return rec

    replay = ReplayNvml(_derived(tmp_path, edit))
    backend = NvmlBackend(replay, name="replay")
    backend.open()
    while replay.phase != "busy":
        backend.sample(slow=True)
    gpu = backend.sample(slow=True).devices[0]
    backend.close()
    assert gpu.power_w is None and gpu.power_limit_w is None
    assert ("power_w", "NVMLError_GpuIsLost") in gpu.errors
    assert ("power_limit_w", "NotInRecording") in gpu.errors
    assert ("fan_pct", "NVMLError_NotSupported") in gpu.errors
    assert gpu.utilisation_pct == 100.0 and gpu.temperature_c is not None
    assert gpu.name == "NVIDIA H200" and gpu.processes == 1


# --- no GPU: the recorded machine and this one ------------------------------------------------


def test_no_driver_replay_is_unavailable_with_the_nvml_reason() -> None:
    with pytest.raises(GpuUnavailable) as caught:
        NvmlBackend(ReplayNvml(NO_DRIVER), name="replay").open()
    assert "NVMLError_LibraryNotFound" in caught.value.reason
    snapshot = probe_gpu(_replay_config(NO_DRIVER))
    assert snapshot.available is False and snapshot.backend == "replay"
    assert snapshot.reason is not None
    assert snapshot.reason.startswith("NVML could not start: NVMLError_LibraryNotFound")
    assert "libnvidia-ml.so" in snapshot.reason and 'gpu_backend = "none"' in snapshot.reason
    assert snapshot.devices == ()


def test_real_nvml_probe_on_this_machine() -> None:
    """A real call, no double: no driver here gives the reason; a GPU machine gives its facts."""
    snapshot = probe_gpu(TelemetrySection(gpu_backend="nvml"))
    assert snapshot.backend == "nvml"
    if snapshot.available:
        assert snapshot.devices and snapshot.driver_version
        assert all(d.name and d.memory_total_bytes for d in snapshot.devices)
        return
    assert snapshot.reason is not None
    assert snapshot.reason.startswith("NVML could not start: NVMLError_")
    if "LibraryNotFound" in snapshot.reason:  # the recorded no-driver machine, word for word
        assert probe_gpu(_replay_config(NO_DRIVER)).reason == snapshot.reason


def test_backend_choices_that_cannot_give_a_gpu() -> None:
    with pytest.raises(GpuUnavailable, match="replay_file is not set"):
        make_gpu_backend(TelemetrySection(gpu_backend="replay"))
    off = probe_gpu(TelemetrySection(gpu_backend="none"))
    assert off.available is False and off.backend == "none" and off.reason


def test_corrupt_recording_names_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = H200.read_text().splitlines()[:5]
    bad.write_text("\n".join([*lines[:2], '{"phase": "static", "fn": ', *lines[2:]]) + "\n")
    with pytest.raises(ReplayFileError, match=r"line 3 is not valid JSON"):
        ReplayNvml(bad)
    not_a_call = tmp_path / "not-a-call.jsonl"
    not_a_call.write_text('{"phase": "idle", "fn": "nvmlInit"}\n')
    with pytest.raises(ReplayFileError, match=r"line 1 is not a recorded NVML call"):
        ReplayNvml(not_a_call)
    with pytest.raises(ReplayFileError, match="cannot read"):
        ReplayNvml(tmp_path / "missing.jsonl")


# --- host --------------------------------------------------------------------------------------


def test_host_snapshot_is_sane(tmp_path: Path) -> None:
    sampler = HostSampler(tmp_path / "data" / "not-created-yet")
    host = sampler.sample()
    assert host.cpu_count >= 1 and 0 <= host.cpu_pct <= 100 * host.cpu_count
    assert host.load_avg_1m >= 0
    assert host.ram_total_bytes > 0 and 0 < host.ram_used_bytes <= host.ram_total_bytes
    assert host.disk_total_bytes > 0 and 0 <= host.disk_free_bytes <= host.disk_total_bytes
    assert host.disk_path == str(tmp_path)


# --- the service on a real loop ---------------------------------------------------------------


async def test_service_publishes_gpu_and_host_and_keeps_bounded_history(tmp_path: Path) -> None:
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    sub = bus.subscribe(GpuSampled, HostSampled)
    config = _replay_config(H200, interval_s=0.005, slow_interval_s=0.02, history=5)
    service = TelemetryService(config, bus, tmp_path)
    service.start()
    try:
        events = await _collect(
            sub, lambda ev: _count(GpuSampled)(ev) >= 12 and _count(HostSampled)(ev) >= 2
        )
    finally:
        service.stop()
    assert not service.running
    gpu = [e.snapshot for e in events if isinstance(e, GpuSampled)]
    assert all(s.available and s.devices[0].name == "NVIDIA H200" for s in gpu)
    assert any(isinstance(e, HostSampled) and e.snapshot.ram_total_bytes > 0 for e in events)
    history = service.history(0)
    assert len(history) == 5  # more samples were taken than the history keeps
    latest = service.latest_gpu()
    assert latest is not None and history[-1] == latest.devices[0]
    assert service.history(1) == []
    assert service.latest_host() is not None
    sub.close()


async def test_service_without_a_gpu_still_samples_the_host(tmp_path: Path) -> None:
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    sub = bus.subscribe(GpuSampled, HostSampled, LogRecorded)
    service = TelemetryService(TelemetrySection(interval_s=0.005), bus, tmp_path)  # auto
    service.start()
    try:
        events = await _collect(
            sub, lambda ev: _count(GpuSampled)(ev) >= 1 and _count(HostSampled)(ev) >= 3
        )
    finally:
        service.stop()
    first_gpu = next(e.snapshot for e in events if isinstance(e, GpuSampled))
    probed = probe_gpu(TelemetrySection(gpu_backend="nvml"))
    assert first_gpu.available == probed.available
    if not probed.available:  # this machine: the service says why, once, and carries on
        assert first_gpu.reason == probed.reason and first_gpu.backend == "nvml"
        assert _count(GpuSampled)(events) == 1
        assert any(isinstance(e, LogRecorded) and e.message == probed.reason for e in events)
    sub.close()


async def test_corrupt_replay_is_reported_and_the_sampler_thread_survives(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(H200.read_text().splitlines()[0] + "\nnot json at all\n")
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    sub = bus.subscribe(GpuSampled, HostSampled)
    service = TelemetryService(_replay_config(bad, interval_s=0.005), bus, tmp_path)
    service.start()
    try:
        events = await _collect(
            sub, lambda ev: _count(GpuSampled)(ev) >= 1 and _count(HostSampled)(ev) >= 3
        )
        assert service.running
    finally:
        service.stop()
    gpu = next(e.snapshot for e in events if isinstance(e, GpuSampled))
    assert gpu.available is False and gpu.backend == "replay"
    assert gpu.reason is not None and "line 2 is not valid JSON" in gpu.reason
    sub.close()


async def test_replay_that_stops_at_its_end_says_so(tmp_path: Path) -> None:
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    sub = bus.subscribe(GpuSampled)
    config = _replay_config(H200, interval_s=0.005, history=100)
    service = TelemetryService(config, bus, tmp_path, replay_loop=False)
    service.start()
    try:
        events = await _collect(
            sub, lambda ev: any(isinstance(e, GpuSampled) and not e.snapshot.available for e in ev)
        )
    finally:
        service.stop()
    gpu = [e.snapshot for e in events if isinstance(e, GpuSampled)]
    assert len(gpu) == H200_SAMPLES + 1
    assert gpu[-1].reason is not None and "played to its end" in gpu[-1].reason
    assert len(service.history(0)) == H200_SAMPLES
    sub.close()


def test_engine_telemetry_imports_neither_textual_nor_pynvml_eagerly() -> None:
    code = (
        "import sys, fabstir_tui.engine.telemetry\n"
        "assert 'textual' not in sys.modules, 'textual'\n"
        "assert 'pynvml' not in sys.modules, 'pynvml'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
