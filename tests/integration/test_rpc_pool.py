"""RpcPool against a real anvil, a dead port and a real HTTP server that rate-limits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.chain.rpc_pool import RpcCallError, RpcPool, RpcUnavailable


@pytest.fixture(scope="module")
def chain() -> Iterator[Anvil]:
    with Anvil(accounts=1) as node:
        yield node


def dead_url(path: str = "") -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}{path}"


@pytest.fixture
async def rate_limited() -> AsyncIterator[str]:
    """A real HTTP server that answers every request 429 Too Many Requests (a test double)."""

    async def refuse(_request: web.Request) -> web.Response:
        return web.Response(status=429, text="slow down")

    app = web.Application()
    app.router.add_post("/", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    await runner.cleanup()


async def test_fails_over_from_a_dead_url_and_reports_the_switch(chain: Anvil) -> None:
    switches: list[tuple[str, str, str]] = []
    pool = RpcPool([dead_url(), chain.http_url], retries=0, on_switch=lambda *a: switches.append(a))
    try:
        assert await pool.block_number() >= 0
        assert pool.current_url == chain.http_url
        assert switches and switches[0][0] == chain.http_url
        assert "cannot connect" in switches[0][2]
        block = await pool.get_block(0)
        assert block is not None and block["number"] == "0x0"
        assert await pool.get_block(10**6) is None
    finally:
        await pool.close()


async def test_rate_limit_fails_over(chain: Anvil, rate_limited: str) -> None:
    switches: list[tuple[str, str, str]] = []
    pool = RpcPool(
        [rate_limited, chain.http_url], retries=0, on_switch=lambda *a: switches.append(a)
    )
    try:
        await pool.block_number()
        assert pool.current_url == chain.http_url
        assert "429" in switches[0][2]
    finally:
        await pool.close()


async def test_all_down_is_a_readable_error_without_api_keys() -> None:
    pool = RpcPool(
        [dead_url("/v2/SECRET-KEY"), dead_url()], retries=1, backoff_s=0.01, timeout_s=1.0
    )
    try:
        with pytest.raises(RpcUnavailable) as info:
            await pool.block_number()
    finally:
        await pool.close()
    message = str(info.value)
    assert "eth_blockNumber" in message and "2 rounds" in message
    assert "cannot connect" in message and "chain.rpc_urls" in message
    assert "SECRET-KEY" not in message


async def test_a_refused_request_is_not_retried(chain: Anvil) -> None:
    pool = RpcPool([chain.http_url], retries=3)
    try:
        with pytest.raises(RpcCallError) as info:
            await pool.request("eth_noSuchMethod", [])
    finally:
        await pool.close()
    assert pool.failures == 0 and info.value.method == "eth_noSuchMethod"


async def test_calls_do_not_wait_on_web3s_process_wide_session_lock(chain: Anvil) -> None:
    """web3 8's async session cache leaks its class-level lock when a request is cancelled at
    the wrong moment; from then on every web3 HTTP call in the process hangs. Ours must not
    touch that lock: with it held (as a leak leaves it), both paths still answer."""
    from web3._utils.http_session_manager import HTTPSessionManager

    pool = RpcPool([chain.http_url])
    lock = HTTPSessionManager._lock
    assert lock.acquire(timeout=5)
    try:
        async with asyncio.timeout(30):
            assert int(await pool.request("eth_chainId", []), 16) == 31337
            assert await pool.web3().eth.chain_id == 31337  # contract calls' path
            # and a cancelled request leaves the next one working
            task = asyncio.create_task(pool.request("eth_blockNumber", []))
            await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert int(await pool.request("eth_chainId", []), 16) == 31337
    finally:
        lock.release()
        await pool.close()
