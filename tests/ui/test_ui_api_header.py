"""The header's API segment over a real node: the real port and the last minute's requests
once a client calls the API, and no API segment when the config leaves it off."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
from ui_helpers import make_config, wait_for

from fabstir_tui.config import ApiSection
from fabstir_tui.engine.node import Node
from fabstir_tui.ui.app import FabstirApp
from fabstir_tui.ui.widgets.status_header import StatusHeader


def header_text(app: FabstirApp) -> str:
    return str(app.screen.query_one(StatusHeader).render())


async def test_the_header_shows_the_api_port_and_counts_a_request(
    tmp_path: Path, models_dir: Path
) -> None:
    base = make_config(tmp_path / "data", models_dir)
    config = base.model_copy(update={"api": ApiSection(enabled=True, listen="127.0.0.1:0")})
    node = Node(config)
    app = FabstirApp(node, config)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_for(pilot, lambda: node.api_status() is not None, "the API")
            status = node.api_status()
            assert status is not None and status.port  # a real, bound port (not 0)
            segment = f"API :{status.port} · 0 open · 0/min"
            await wait_for(pilot, lambda: segment in header_text(app), "the API segment")
            async with (
                aiohttp.ClientSession() as http,
                http.get(status.url + "/v1/no-such-route") as response,
            ):
                assert response.status == 404  # a refusal is traffic too
            counted = f"API :{status.port} · 0 open · 1/min"
            await wait_for(pilot, lambda: counted in header_text(app), "the request counted")
    finally:
        await node.stop()


async def test_the_header_has_no_api_segment_when_the_config_leaves_it_off(
    node_for: Callable[..., Node],
) -> None:
    node = node_for()  # the API is off unless the config turns it on
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: node.state == "running", "the node")
        await wait_for(pilot, lambda: "P2P" in header_text(app), "the header drawn")
        assert "API" not in header_text(app)
        assert node.api_status() is None
