"""The API's traffic as an operator sees it: a real node serving the API on 127.0.0.1, real
requests (a completion, a 401, a 413, a 404, a stream held open in the slot queue, a WebSocket),
and the counts read back from the node, from /metrics (prometheus_client's own parser) and
from /v1/node/status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from api_kit import KEY, PROMPT, api_node, bearer, data_of, error_of, model_id, sse_lines, url
from prometheus_client.parser import text_string_to_metric_families

from fabstir_tui.engine.api.traffic import ApiSnapshot
from fabstir_tui.engine.node import Node

pytestmark = pytest.mark.slow


async def settled(read: Callable[[], Any], what: str) -> Any:
    """Poll until `read()` is truthy: the server's side of a request ends just after the
    client has read its last byte (the bound only stops a hung test)."""
    async with asyncio.timeout(30):
        while not (value := read()):
            await asyncio.sleep(0.02)
    assert value, what
    return value


def status_of(node: Node) -> ApiSnapshot:
    status = node.api_status()
    assert status is not None, "the API did not start"
    return status


def counts(snapshot: ApiSnapshot) -> dict[tuple[str, int], int]:
    return {(r.route, r.code): r.count for r in snapshot.requests}


async def scrape(http: aiohttp.ClientSession, node: Node) -> dict[str, dict[Any, float]]:
    """The API families of /metrics: name -> {labels as a sorted tuple: value}."""
    async with http.get(url(node, "/metrics")) as response:
        assert response.status == 200
        text = await response.text()
    found: dict[str, dict[Any, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("fabstir_api_"):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                by_labels = found.setdefault(sample.name, {})
                by_labels[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def requests_metric(code: int, route: str = "/v1/completions") -> tuple[tuple[str, str], ...]:
    return (("code", str(code)), ("route", route))


async def test_requests_refusals_and_an_open_stream_are_counted_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FABSTIR_API_KEY", KEY)
    async with (
        api_node(tmp_path, max_body_bytes=2048) as node,
        aiohttp.ClientSession() as http,
    ):
        first = status_of(node)
        assert (first.requests_total, first.open_requests, first.per_minute) == (0, 0, 0)
        assert node.api is not None and first.url == node.api.url
        endpoint = url(node, "/v1/completions")
        ask = {"model": model_id(node), "prompt": PROMPT, "max_tokens": 4, "temperature": 0}

        async with http.post(endpoint, json=ask, headers=bearer()) as response:
            assert response.status == 200, await response.text()
        async with http.post(endpoint, json=ask, headers=bearer("not-the-key")) as response:
            assert response.status == 401
            assert (await error_of(response))["code"] == "invalid_api_key"
        too_big = b'{"prompt": "' + b"x" * 4096 + b'"}'
        headers = {**bearer(), "Content-Type": "application/json"}
        async with http.post(endpoint, data=too_big, headers=headers) as response:
            assert response.status == 413
            assert (await error_of(response))["code"] == "body_too_large"
        async with http.get(url(node, "/v1/no-such-route")) as response:
            assert response.status == 404

        # The test holds the model's only slot, so the stream waits in the queue: open.
        [model] = node.list_models()
        lease = await node.models.slot_queue(model.path).acquire()
        stream = {**ask, "stream": True}
        async with http.post(endpoint, json=stream, headers=bearer()) as held:
            try:
                assert held.status == 200
                assert (await held.content.readline()) == b": queued 1\n"
                during = status_of(node)
                assert (during.open_requests, during.open_websockets) == (1, 0)
                metrics = await scrape(http, node)
                # the scrape is itself a request in progress while it reads the gauge
                assert metrics["fabstir_api_open_requests"] == {(): 2.0}
            finally:
                lease.release()
            lines = [line async for line in sse_lines(held)]
            assert data_of(lines[-1]) == "[DONE]"

        after = await settled(
            lambda: (s := status_of(node)).open_requests == 0 and s, "the stream's end"
        )
        assert counts(after) == {
            ("/v1/completions", 200): 2,
            ("/v1/completions", 401): 1,
            ("/v1/completions", 413): 1,
            ("other", 404): 1,
            ("/metrics", 200): 1,
        }
        assert (after.requests_total, after.errors_total, after.per_minute) == (6, 3, 6)
        assert dict(after.refusals) == {"invalid_api_key": 1, "body_too_large": 1, "not_found": 1}

        metrics = await scrape(http, node)
        assert metrics["fabstir_api_requests_total"] == {
            requests_metric(200): 2.0,
            requests_metric(401): 1.0,
            requests_metric(413): 1.0,
            requests_metric(404, "other"): 1.0,
            requests_metric(200, "/metrics"): 1.0,
        }
        assert metrics["fabstir_api_refusals_total"] == {
            (("code", "body_too_large"),): 1.0,
            (("code", "invalid_api_key"),): 1.0,
            (("code", "not_found"),): 1.0,
        }
        assert metrics["fabstir_api_open_requests"] == {(): 1.0}  # the scrape itself
        assert metrics["fabstir_api_open_websockets"] == {(): 0.0}

        async with http.get(url(node, "/v1/node/status")) as response:
            api = (await response.json())["api"]
        assert api["enabled"] is True and api["running"] is True
        assert api["url"] == after.url
        assert (api["open_requests"], api["open_websockets"]) == (1, 0)  # this request
        assert (api["requests_total"], api["errors_total"]) == (7, 3)  # + the second scrape


async def test_a_websocket_counts_as_open_while_connected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FABSTIR_API_KEY", KEY)
    async with api_node(tmp_path) as node, aiohttp.ClientSession() as http:
        [model] = node.list_models()
        async with http.ws_connect(url(node, "/v1/ws"), headers=bearer()) as ws:
            await ws.send_json({"type": "init", "model": model.name})
            async with asyncio.timeout(30):
                ready = await ws.receive_json()
            assert ready["type"] == "ready"
            during = status_of(node)
            assert (during.open_requests, during.open_websockets) == (1, 1)
            metrics = await scrape(http, node)
            assert metrics["fabstir_api_open_websockets"] == {(): 1.0}
        after = await settled(
            lambda: (s := status_of(node)).open_websockets == 0 and s, "the socket's end"
        )
        assert after.open_requests == 0
        assert counts(after) == {("/v1/ws", 101): 1, ("/metrics", 200): 1}
        assert after.errors_total == 0


async def test_an_error_inside_a_started_stream_is_counted_as_that_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FABSTIR_API_KEY", KEY)
    async with api_node(tmp_path) as node, aiohttp.ClientSession() as http:
        [model] = node.list_models()
        ask = {"model": model_id(node), "prompt": PROMPT, "max_tokens": 4, "stream": True}
        lease = await node.models.slot_queue(model.path).acquire()
        async with http.post(url(node, "/v1/completions"), json=ask, headers=bearer()) as held:
            try:
                assert held.status == 200  # the queue comment went out: the status is sent
                assert (await held.content.readline()) == b": queued 1\n"
                await node.unload_model(model.path)  # the slot comes free with no model
            finally:
                lease.release()
            lines = [line async for line in sse_lines(held)]
        events = [data_of(line) for line in lines if line.startswith("data: ")]
        assert [event["error"]["code"] for event in events] == ["busy"]
        after = await settled(
            lambda: (s := status_of(node)).open_requests == 0 and s, "the stream's end"
        )
        assert counts(after) == {("/v1/completions", 409): 1}
        assert (after.errors_total, dict(after.refusals)) == (1, {"busy": 1})
