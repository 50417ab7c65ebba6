"""The node's own API serves /metrics and /v1/node/status (mounted by start_api), and
`fabstir-tui status` in another process reads the running node through it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from api_kit import KEY, PROMPT, api_node, bearer, model_id, url
from prometheus_client.parser import text_string_to_metric_families


def _completion_tokens(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "fabstir_tokens":
            return sum(s.value for s in family.samples if s.labels.get("kind") == "completion")
    return 0.0


@pytest.mark.slow
async def test_metrics_move_with_an_api_completion_and_status_reads_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FABSTIR_API_KEY", KEY)
    async with api_node(tmp_path) as node, aiohttp.ClientSession() as http:
        async with http.get(url(node, "/metrics")) as response:
            assert response.status == 200
            before = _completion_tokens(await response.text())
        body = {"model": model_id(node), "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
        async with http.post(
            url(node, "/v1/completions"), json=body, headers=bearer(KEY)
        ) as response:
            assert response.status == 200, await response.text()
            usage = (await response.json())["usage"]
        async with http.get(url(node, "/metrics")) as response:
            after = _completion_tokens(await response.text())
        assert after - before == usage["completion_tokens"] > 0

        assert node.api is not None
        command = [sys.executable, "-m", "fabstir_tui.cli", "status", "--json"]
        done = await asyncio.to_thread(
            subprocess.run,
            [*command, "--url", node.api.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["state"] == "running"
        assert str(tmp_path) not in done.stdout  # no local paths leak through the API
