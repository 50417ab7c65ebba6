"""Helpers for the follower tests: a recording handler, an event emitter and real relays."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Self

import aiohttp
from aiohttp import web
from web3 import Web3
from web3.contract import Contract

from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.chain.deploy import deploy_contract
from fabstir_tui.engine.chain.logs import DecodedLog
from fabstir_tui.engine.store import Store


async def wait_until(
    condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition"
) -> None:
    """Poll a condition with a generous limit: tests assert outcomes, never timings."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Recorder:
    """apply/on_reorg handlers that write their own table, like real handlers will."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[DecodedLog] = []
        self.reorgs: list[int] = []
        with store.transaction() as db:
            db.execute(
                """CREATE TABLE IF NOT EXISTS test_transfers (
                     tx_hash TEXT NOT NULL, log_index INTEGER NOT NULL,
                     block_number INTEGER NOT NULL, receiver TEXT NOT NULL, amount TEXT NOT NULL,
                     PRIMARY KEY (tx_hash, log_index))"""
            )

    def apply(self, db: sqlite3.Connection, log: DecodedLog) -> None:
        """A plain INSERT: a log applied twice would raise IntegrityError and fail the test."""
        self.calls.append(log)
        if log.event == "Transfer":
            db.execute(
                "INSERT INTO test_transfers VALUES (?, ?, ?, ?, ?)",
                (log.tx_hash, log.log_index, log.block_number, log.args["to"], log.args["value"]),
            )

    def on_reorg(self, db: sqlite3.Connection, fork_block: int) -> None:
        self.reorgs.append(fork_block)
        db.execute("DELETE FROM test_transfers WHERE block_number > ?", (fork_block,))

    def rows(self) -> set[tuple[str, int]]:
        return {
            (str(tx), int(str(i)))
            for tx, i in self.store.query("SELECT tx_hash, log_index FROM test_transfers")
        }

    def amounts(self) -> dict[tuple[str, int], int]:
        rows = self.store.query("SELECT tx_hash, log_index, amount FROM test_transfers")
        return {(str(tx), int(str(i))): int(str(a)) for tx, i, a in rows}


class Emitter:
    """Mints of the test token from anvil's first account; each mint is a block (automine)."""

    def __init__(self, chain: Anvil) -> None:
        self.chain = chain
        self.w3 = Web3(Web3.HTTPProvider(chain.http_url))
        self.owner = self.w3.eth.accounts[0]
        self.receiver = self.w3.eth.accounts[1]
        self.token: Contract = deploy_contract(self.w3, "FabstirTestToken", self.owner)
        self.sent = 0

    @property
    def contracts(self) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        return {"token": (str(self.token.address), list(self.token.abi))}

    def mint_sync(self, amount: int | None = None) -> str:
        self.sent += 1
        value = amount if amount is not None else self.sent
        tx = self.token.functions.mint(self.receiver, value).transact({"from": self.owner})
        self.w3.eth.wait_for_transaction_receipt(tx)
        return "0x" + bytes(tx).hex()

    async def mint(self, count: int = 1, pause_s: float = 0.0) -> None:
        """Mint off the loop (web3's sync client would block the follower under test)."""
        for _ in range(count):
            await asyncio.to_thread(self.mint_sync)
            if pause_s:
                await asyncio.sleep(pause_s)

    def chain_logs(self) -> set[tuple[str, int]]:
        """The chain's own answer over the whole range: what must have been applied."""
        logs = self.chain.rpc(
            "eth_getLogs",
            [{"fromBlock": "0x0", "toBlock": "latest", "address": self.token.address}],
        )
        return {(str(x["transactionHash"]).lower(), int(x["logIndex"], 16)) for x in logs}


class TcpRelay:
    """A real TCP relay (asyncio streams) in front of anvil: cut() drops every live connection
    abruptly, and `refusing` makes it close new ones at once, like a node that went away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = False
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> int:
        """Abort every relayed connection (both sides) without a WebSocket close frame."""
        cut = len(self._writers)
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        return cut

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class JsonRpcRelay:
    """A real HTTP JSON-RPC relay to anvil (a test double for a provider or a load balancer in
    front of a node): subclasses override `intercept` to answer a request themselves, before
    or after forwarding it; by default every request is forwarded unchanged."""

    def __init__(self, target_url: str) -> None:
        self.target_url = target_url
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._session = aiohttp.ClientSession()
        return self

    async def forward(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send the request on to anvil and return its answer."""
        assert self._session is not None
        async with self._session.post(self.target_url, json=body) as upstream:
            answer: dict[str, Any] = await upstream.json(content_type=None)
            return answer

    async def intercept(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """An answer of the relay's own, or None to forward the request unchanged."""
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        answer = await self.intercept(body)
        if answer is None:
            answer = await self.forward(body)
        return web.json_response(answer)

    @staticmethod
    def error(body: dict[str, Any], code: int, message: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": body["id"], "error": {"code": code, "message": message}}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


class RangeCappingRpc(JsonRpcRelay):
    """A real HTTP JSON-RPC relay to anvil that refuses eth_getLogs over `max_blocks` blocks
    with the error a capped provider sends (a test double for Alchemy-style range limits)."""

    def __init__(self, target_url: str, max_blocks: int) -> None:
        super().__init__(target_url)
        self.max_blocks = max_blocks
        self.refused = 0
        self.served_ranges: list[int] = []

    async def intercept(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if body.get("method") == "eth_getLogs":
            params = body["params"][0]
            if "fromBlock" in params:
                span = int(params["toBlock"], 16) - int(params["fromBlock"], 16) + 1
                if span > self.max_blocks:
                    self.refused += 1
                    message = f"eth_getLogs block range too large, max {self.max_blocks}"
                    return self.error(body, -32600, message)
                self.served_ranges.append(span)
        return None


class LaggingLogsRpc(JsonRpcRelay):
    """Test double for a load balancer with a backend behind the head: the first `lies`
    eth_getLogs over a block range whose real answer holds logs are answered with [] (the
    by-hash queries and everything else pass through). `saturate_blooms` makes every header's
    logsBloom all ones, like a busy mainnet block where the bloom matches nearly anything."""

    def __init__(self, target_url: str, lies: int = 1, saturate_blooms: bool = False) -> None:
        super().__init__(target_url)
        self.lies = lies
        self.saturate_blooms = saturate_blooms
        self.lied = 0
        self.range_queries = 0
        self.hash_queries = 0

    async def intercept(self, body: dict[str, Any]) -> dict[str, Any] | None:
        method = body.get("method")
        if method == "eth_getLogs":
            params = body["params"][0]
            if "blockHash" in params:
                self.hash_queries += 1
                return None
            self.range_queries += 1
            answer = await self.forward(body)
            if answer.get("result") and self.lied < self.lies:
                self.lied += 1
                return {**answer, "result": []}
            return answer
        if method == "eth_getBlockByNumber" and self.saturate_blooms:
            answer = await self.forward(body)
            if isinstance(answer.get("result"), dict):
                answer["result"]["logsBloom"] = "0x" + "ff" * 256
            return answer
        return None


class AmbiguousSendRpc(JsonRpcRelay):
    """Test double for a load balancer that answers the first `times` eth_sendRawTransaction
    with a JSON-RPC error that is not a refusal (-32603 "internal error" by default): after
    handing the transaction to anvil (`forward`) or after losing it on the way."""

    def __init__(
        self,
        target_url: str,
        *,
        forward: bool,
        times: int = 1,
        code: int = -32603,
        message: str = "internal error",
    ) -> None:
        super().__init__(target_url)
        self.forward_first = forward
        self.times = times
        self.code = code
        self.message = message
        self.sends = 0
        self.answered: list[dict[str, Any]] = []  # what anvil said to the forwarded ones

    async def intercept(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if body.get("method") != "eth_sendRawTransaction":
            return None
        self.sends += 1
        if self.sends > self.times:
            return None
        if self.forward_first:
            self.answered.append(await self.forward(body))
        return self.error(body, self.code, self.message)
