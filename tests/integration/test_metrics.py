"""`/metrics` and `/v1/node/status` on a real Node (tiny GGUF in llama.cpp, GPU telemetry replayed
from a real H200 recording), mounted on a test aiohttp server; and `fabstir-tui status` against
it and against a closed port."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from fabstir_tui.cli import main_group
from fabstir_tui.config import Config
from fabstir_tui.engine.api.observability import observability_routes
from fabstir_tui.engine.chain.events import TxSettled
from fabstir_tui.engine.inference.stream import GenerationRequest
from fabstir_tui.engine.node import Node

REPLAY = Path(__file__).parent.parent / "fixtures" / "nvml" / "h200-idle-then-busy.jsonl"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _config(tmp_path: Path, models: Path) -> Config:
    # One GPU sample a minute (the most the config allows): the first reading stays put while
    # a test runs, so it can be compared with the recording exactly.
    return Config.model_validate(
        {
            "node": {"name": "metrics-test-node"},
            "paths": {"data_dir": str(tmp_path / "data"), "models_dirs": [str(models)]},
            "inference": {"threads": 1, "context_length": 256},
            "telemetry": {"gpu_backend": "replay", "replay_file": str(REPLAY), "interval_s": 60},
        }
    )


class Served:
    """A started node with one loaded model, and the observability routes on a test server."""

    def __init__(self, node: Node, model_path: str, server: TestServer) -> None:
        self.node = node
        self.model_path = model_path
        self.server = server

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def get(self, path: str) -> tuple[int, str, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path) as response,
        ):
            return response.status, response.headers["Content-Type"], await response.text()

    async def scrape(self) -> Samples:
        status, _, text = await self.get("/metrics")
        assert status == 200
        return _samples(text)


def _samples(text: str) -> Samples:
    """Every sample by (name, labels), parsed by Prometheus' own text parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: Samples, name: str, /, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
async def served(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[Served]:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_gguf, models / "tiny.gguf")
    node = Node(_config(tmp_path, models))
    await node.start()
    server: TestServer | None = None
    try:
        loaded = await node.load_model(models / "tiny.gguf")
        app = web.Application()
        for method, path, handler in observability_routes(node):
            app.router.add_route(method, path, handler)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        yield Served(node, loaded.path, server)
    finally:
        if server is not None:
            await server.close()
        await node.stop()


async def _until(what: str, check: Callable[[], Any]) -> Any:
    """Poll an async check until it returns a truthy value; the bound only stops a hang."""
    async with asyncio.timeout(30):
        while not (result := await check()):
            await asyncio.sleep(0.05)
    assert result, what
    return result


async def test_metrics_parse_and_move_by_the_generation(served: Served) -> None:
    status, content_type, _ = await served.get("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    before = await served.scrape()
    tiny = {"model": "tiny.gguf"}
    assert _value(before, "fabstir_tokens_total", kind="completion", **tiny) == 0
    assert _value(before, "fabstir_inference_queue_depth", **tiny) == 0
    assert _value(before, "fabstir_inference_slots_busy", **tiny) == 0
    assert _value(before, "fabstir_inference_slots", **tiny) == served.node.config.inference.slots
    assert _value(before, "fabstir_node_state", state="running") == 1
    assert _value(before, "fabstir_models_loaded") == 1

    request = GenerationRequest(prompt="hello world", max_tokens=12, temperature=0.0)
    stream = served.node.generate(served.model_path, request)
    await stream.text()
    stats = stream.stats
    assert stats.completion_tokens > 1  # the speed gauge needs two tokens to measure

    async def moved() -> Samples | None:
        now = await served.scrape()
        done = _value(now, "fabstir_generations_total", outcome="finished", **tiny)
        return now if done == 1 else None

    after = await _until("the generation reaches the counters", moved)
    for kind, count in (("completion", stats.completion_tokens), ("prompt", stats.prompt_tokens)):
        delta = _value(after, "fabstir_tokens_total", kind=kind, **tiny) - _value(
            before, "fabstir_tokens_total", kind=kind, **tiny
        )
        assert delta == count, kind
    assert _value(after, "fabstir_last_generation_tokens_per_second", **tiny) > 0
    assert _value(after, "fabstir_metrics_events_dropped_total") == 0


async def test_tx_errors_count_settled_failures_from_the_bus(served: Served) -> None:
    before = await served.scrape()
    assert _value(before, "fabstir_tx_errors_total", status="failed") == 0
    # The chain is off in this test, so the settled failure is published as the sender would.
    served.node.bus.publish(TxSettled(tx_hash="0x" + "ab" * 32, label="claim", status="failed"))
    served.node.bus.publish(TxSettled(tx_hash="0x" + "cd" * 32, label="claim", status="mined"))

    async def counted() -> Samples | None:
        now = await served.scrape()
        return now if _value(now, "fabstir_tx_settled_total", status="mined") == 1 else None

    after = await _until("the settled transactions are counted", counted)
    assert _value(after, "fabstir_tx_errors_total", status="failed") == 1
    assert _value(after, "fabstir_tx_errors_total", status="dropped") == 0


def _first_recorded(fn: str, phase: str) -> Any:
    """The recording's first answer to `fn` in `phase`, read straight from the JSONL file."""
    for line in REPLAY.read_text().splitlines():
        row = json.loads(line)
        if row["phase"] == phase and row["fn"] == fn:
            return row["ok"]
    raise AssertionError(f"{fn} not in the {phase} phase of {REPLAY.name}")


async def test_gpu_gauges_equal_the_recording(served: Served) -> None:
    async def sampled() -> bool:
        gpu = served.node.telemetry.latest_gpu()
        return gpu is not None and gpu.available

    await _until("the replayed GPU is sampled", sampled)
    samples = await served.scrape()
    assert len(served.node.telemetry.history(0)) == 1, "a second sample came: compare the first"
    gpu0 = {
        "gpu": "0",
        "name": _first_recorded("nvmlDeviceGetName", "static"),
        "uuid": _first_recorded("nvmlDeviceGetUUID", "static"),
    }
    expected = {
        "fabstir_gpu_utilization_percent": _first_recorded("nvmlDeviceGetUtilizationRates", "idle")[
            "gpu"
        ],
        "fabstir_gpu_memory_used_bytes": _first_recorded("nvmlDeviceGetMemoryInfo", "idle")["used"],
        "fabstir_gpu_memory_total_bytes": _first_recorded("nvmlDeviceGetMemoryInfo", "static")[
            "total"
        ],
        "fabstir_gpu_temperature_celsius": _first_recorded("nvmlDeviceGetTemperature", "idle"),
        "fabstir_gpu_power_watts": _first_recorded("nvmlDeviceGetPowerUsage", "idle") / 1000,
    }
    for name, value in expected.items():
        assert _value(samples, name, **gpu0) == value, name
    assert _value(samples, "fabstir_gpu_available", backend="replay") == 1


async def test_status_document_describes_the_node_without_secrets(served: Served) -> None:
    status, content_type, body = await served.get("/v1/node/status")
    assert status == 200 and content_type.startswith("application/json")
    doc = json.loads(body)
    assert doc["name"] == "metrics-test-node"
    assert doc["state"] == "running"
    [model] = doc["models"]["loaded"]
    assert model["name"] == "tiny.gguf"
    assert model["slots"] == {"capacity": 1, "busy": 0, "waiting": 0}
    assert doc["peers"] == {"connected": 0, "known": 0}
    assert doc["p2p"] is None  # P2P is off in this config
    assert doc["jobs"]["pipeline_running"] is False
    data_dir = str(served.node.config.paths.data_dir)
    assert data_dir not in body  # no keystore path (it lives in the data dir)
    assert "keystore" not in body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_status_command_reads_the_running_node(served: Served) -> None:
    async def run_cli(*args: str) -> Any:
        return await asyncio.to_thread(CliRunner().invoke, main_group, ["status", *args])

    as_json = await run_cli("--json", "--url", served.url)
    assert as_json.exit_code == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["name"] == "metrics-test-node"
    assert doc["models"]["loaded"][0]["name"] == "tiny.gguf"

    human = await run_cli("--url", served.url)
    assert human.exit_code == 0, human.stderr
    assert "metrics-test-node (running)" in human.stdout
    assert "tiny.gguf: 0/1 slots busy" in human.stdout
    assert "NVIDIA H200" in human.stdout


def test_status_command_refuses_when_no_node_listens() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = CliRunner().invoke(main_group, ["status", "--json", "--url", url])
    assert result.exit_code == 1
    assert "no node answers" in result.stderr
    assert "api.enabled = true" in result.stderr
    assert json.loads(result.stdout) == {
        "url": url,
        "reachable": False,
        "error": result.stderr.removeprefix("error: ").strip(),
    }


class _OneAnswer:
    """A loopback TCP server that sends the same bytes to every connection (not a node)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def _http(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\nConnection: close\r\n\r\n" + body


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "did not answer in HTTP"),
        (b"", "did not answer in HTTP"),  # accepts, then hangs up
        (_http(b"{}"), "not a fabstir-tui status document"),
        (_http(b"<html>a proxy's page</html>"), "not with JSON"),
        (_http(b'{"name": "n", "state": "running", "version": "1", "models": 3}'), "cannot show"),
    ],
)
def test_status_command_says_what_answered_instead_of_a_node(answer: bytes, said: str) -> None:
    server = _OneAnswer(answer)
    try:
        result = CliRunner().invoke(main_group, ["status", "--url", server.url])
    finally:
        server.close()
    assert result.exit_code == 1, result.output
    assert said in result.stderr and "Traceback" not in result.output


def test_status_command_refuses_a_url_it_cannot_dial() -> None:
    result = CliRunner().invoke(main_group, ["status", "--url", "http://127.0.0.1:abc"])
    assert result.exit_code == 1
    assert "is not a URL this can dial" in result.stderr
