"""A real node serving the client HTTP API on 127.0.0.1 (port 0) with the tiny GGUF loaded,
and small helpers to read JSON errors and server-sent events from it."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from gguf_factory import write_tiny_llama

from fabstir_tui.config import (
    ApiSection,
    Config,
    InferenceSection,
    PathsSection,
    TelemetrySection,
)
from fabstir_tui.engine.node import Node

CTX = 4096
KEY = "operator-test-key-7f3a"
PROMPT = "Once upon a time"


@asynccontextmanager
async def api_node(
    root: Path, *, load: bool = True, ctx: int = CTX, **api: Any
) -> AsyncIterator[Node]:
    """A started node with the API on a free port (operator key KEY), model hashed and,
    unless `load` is False, loaded; stopped on exit."""
    models = root / "models"
    models.mkdir()
    write_tiny_llama(root / "tiny.gguf", context_length=ctx)
    shutil.copy(root / "tiny.gguf", models / "tiny.gguf")
    config = Config(
        paths=PathsSection(data_dir=root / "data", cache_dir=root / "c", models_dirs=[models]),
        inference=InferenceSection(threads=1, context_length=ctx, slots=1),
        telemetry=TelemetrySection(gpu_backend="none"),
        api=ApiSection(enabled=True, listen="127.0.0.1:0", **api),
    )
    node = Node(config)
    await node.start()
    try:
        async with asyncio.timeout(60):
            while any(m.sha256 is None for m in node.list_models()):
                await asyncio.sleep(0.05)
        if load:
            [model] = node.list_models()
            await node.load_model(model.path)
        yield node
    finally:
        await node.stop()


def url(node: Node, path: str) -> str:
    assert node.api is not None, "the API did not start (see the node log)"
    return node.api.url + path


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def model_id(node: Node) -> str:
    [model] = node.list_models()
    assert model.sha256 is not None
    return "0x" + model.sha256


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON error body every refusal carries (code, message, type)."""
    assert response.content_type == "application/json", await response.text()
    body = await response.json()
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


async def sse_lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """Each non-empty SSE line as sent (`data: ...` or a `: comment`)."""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line:
            yield line


def data_of(line: str) -> Any:
    """The JSON of a `data:` line ("[DONE]" stays a string)."""
    assert line.startswith("data: "), line
    text = line[len("data: ") :]
    return text if text == "[DONE]" else json.loads(text)


class ReceiptHold:
    """Instrumentation, not a double: the runner's real receipt step waits (after `signing`
    is set) until the test sets `go`, holding open the window between a run's end and its
    record so a test can land a cancel or a disconnect inside it."""

    def __init__(self, monkeypatch: Any) -> None:
        from fabstir_tui.engine.serving.runner import RequestRunner

        self.signing, self.go = asyncio.Event(), asyncio.Event()
        issue = RequestRunner._receipt_for
        hold = self

        async def held_receipt(runner: RequestRunner, job: Any, end: Any) -> Any:
            hold.signing.set()
            await hold.go.wait()
            return await issue(runner, job, end)

        monkeypatch.setattr(RequestRunner, "_receipt_for", held_receipt)
