"""The Node as the UI and CLI drive it: start, scan, hash, load, generate, audit, stop."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from fabstir_tui.config import Config, InferenceSection, PathsSection, TelemetrySection
from fabstir_tui.engine.events import GpuSampled, HostSampled, ModelHashed, NodeStateChanged
from fabstir_tui.engine.inference.stream import GenerationRequest, InferenceError
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.store import StoreError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nvml"


def _config(tmp_path: Path, models: Path, replay: str = "h200-idle-then-busy.jsonl") -> Config:
    return Config(
        paths=PathsSection(
            data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", models_dirs=[models]
        ),
        inference=InferenceSection(threads=1, context_length=256),
        telemetry=TelemetrySection(
            gpu_backend="replay",
            replay_file=FIXTURES / replay,
            interval_s=0.05,
            slow_interval_s=0.2,
        ),
    )


async def test_node_lifecycle_and_audit_survive_restart(tmp_path: Path, tiny_gguf: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_gguf, models / "tiny.gguf")
    node = Node(_config(tmp_path, models))
    sub = node.bus.subscribe(ModelHashed, GpuSampled, HostSampled, NodeStateChanged)
    await node.start()
    try:
        assert node.state == "running"
        [info] = node.list_models()
        assert info.architecture == "llama" and info.error is None
        kinds: set[type] = set()
        async with asyncio.timeout(30):
            async for ev in sub:
                kinds.add(type(ev))
                if {ModelHashed, GpuSampled, HostSampled} <= kinds:
                    break
        snap = node.snapshot()
        assert snap.gpu is not None and snap.gpu.available
        assert snap.gpu.devices[0].name.startswith("NVIDIA H200")
        assert snap.host is not None and snap.host.ram_total_bytes > 0
        assert node.list_models()[0].sha256 is not None

        model = await node.load_model(models / "tiny.gguf")
        text = await node.generate(model.path, GenerationRequest(prompt="hi", max_tokens=5)).text()
        assert text
        await node.unload_model(model.path)
        try:
            await node.unload_model(model.path)
        except InferenceError as exc:
            assert "not loaded" in str(exc)
        else:
            raise AssertionError("unloading twice must be refused")
    finally:
        await node.stop()
    assert node.state == "stopped"

    # The audit trail is durable: a new node on the same data dir shows it.
    again = Node(_config(tmp_path, models))
    await again.start()
    try:
        actions = [(a.action, a.outcome) for a in again.recent_audit()]
        assert actions[0][0] == "load model" and actions[0][1].startswith("loaded")
        assert ("unload model", "unloaded") in actions
        assert any(o.startswith("failed: ") for a, o in actions if a == "unload model")
        # The hash cache is reused: no rehash needed, the SHA-256 is there at once.
        assert again.list_models()[0].sha256 == node.list_models()[0].sha256
    finally:
        await again.stop()


async def test_node_without_gpu_reports_why(tmp_path: Path) -> None:
    node = Node(_config(tmp_path, tmp_path, replay="no-driver.jsonl"))
    sub = node.bus.subscribe(GpuSampled)
    await node.start()
    try:
        async with asyncio.timeout(30):
            ev = await sub.get()
        assert isinstance(ev, GpuSampled) and not ev.snapshot.available
        assert "LibraryNotFound" in (ev.snapshot.reason or "")
    finally:
        await node.stop()


async def test_node_that_cannot_start_says_failed_and_why(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    config = _config(tmp_path, tmp_path)
    config = config.model_copy(
        update={"paths": config.paths.model_copy(update={"data_dir": blocker / "data"})}
    )
    node = Node(config)
    sub = node.bus.subscribe(NodeStateChanged)
    try:
        await node.start()
    except StoreError as exc:
        assert "cannot create the data dir" in str(exc)
    else:
        raise AssertionError("a node whose data dir cannot exist must not start")
    states: list[tuple[str, str]] = []
    async with asyncio.timeout(30):
        while not states or states[-1][0] != "failed":
            ev = await sub.get()
            assert isinstance(ev, NodeStateChanged)
            states.append((ev.state, ev.detail))
    assert states[0][0] == "starting"
    assert states[-1][0] == "failed" and "cannot create the data dir" in states[-1][1]
    await node.stop()  # stopping a failed node is safe
