"""The WebSocket session protocol (`GET /v1/ws`) on a real node with real llama.cpp: an operator
session streams what the engine generates, refuses bad messages and keeps going, cancels and
frees its slot; refusals close the socket with 4000 + status; the node stopping closes every
socket; and (slow, on anvil) a paid session signed by its client gets chained receipts."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from api_kit import KEY, PROMPT, ReceiptHold, api_node, bearer, model_id, url
from pipeline_kit import (
    FEE_BPS,
    PRICE,
    Rig,
    api_paid_node,
    make_rig,
    open_session,
    session,
    until,
)

from fabstir_tui.engine.api import ws as ws_module
from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.chain.anvil import anvil_account
from fabstir_tui.engine.events import GenerationFinished
from fabstir_tui.engine.inference.stream import GenerationRequest
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.p2p.request_auth import AuthDomain, sign_request
from fabstir_tui.engine.proofs import ZERO_HASH, parse_receipt, receipt_hash

WS = aiohttp.ClientWebSocketResponse
LONG = 3500  # tokens: far more than are generated before the test cancels


@pytest.fixture(autouse=True)
def operator_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABSTIR_API_KEY", KEY)


async def receive(ws: WS) -> dict[str, Any]:
    """The next message, which must be a JSON text frame."""
    async with asyncio.timeout(60):
        msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    body = json.loads(msg.data)
    assert isinstance(body, dict)
    return body


async def until_done(ws: WS, request_id: str) -> list[dict[str, Any]]:
    """Every message up to and including this request's end or error."""
    got = []
    while True:
        message = await receive(ws)
        got.append(message)
        if message.get("id") == request_id and message["type"] in ("end", "error"):
            return got


async def closed_with(ws: WS) -> int:
    """Wait for the server's close frame; the code it carries."""
    async with asyncio.timeout(30):
        msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    return int(msg.data)


def chunks_of(messages: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "chunk" and m["id"] == request_id]


async def test_an_operator_session_streams_refuses_bad_messages_and_cancels(
    tmp_path: Path,
) -> None:
    async with api_node(tmp_path) as node, aiohttp.ClientSession() as http:
        [model] = node.list_models()
        slots = node.models.slot_queue(model.path)
        settings = {"max_tokens": 12, "temperature": 0.0, "seed": 7}
        own = node.generate(model.path, GenerationRequest(prompt=PROMPT, **settings))
        expected = await own.text()
        assert expected
        async with http.ws_connect(url(node, "/v1/ws"), headers=bearer()) as ws:
            await ws.send_json({"type": "init", "model": model.name})
            assert await receive(ws) == {
                "type": "ready",
                "mode": "operator",
                "session_id": None,
                "model": model_id(node),
            }
            await ws.send_str("{not json")
            error = await receive(ws)
            assert error["code"] == "invalid_message" and "not JSON" in error["message"]
            await ws.send_json({"type": "shout"})
            assert "'type'" in (await receive(ws))["message"]
            await ws.send_json({"type": "prompt", "id": "bad", "prompt": "x", "max_tokens": 0})
            error = await receive(ws)
            assert (error["code"], error["id"]) == ("invalid_message", "bad")
            assert "'max_tokens'" in error["message"]

            await ws.send_json({"type": "prompt", "id": "r1", "prompt": PROMPT, **settings})
            messages = await until_done(ws, "r1")
            chunks = chunks_of(messages, "r1")
            assert len(chunks) >= 1 and len(messages) == len(chunks) + 1
            assert "".join(c["text"] for c in chunks) == expected  # greedy: the engine's text
            end = messages[-1]
            assert end["type"] == "end" and end["finish_reason"] == "length"
            assert end["usage"] == {
                "prompt_tokens": own.stats.prompt_tokens,
                "completion_tokens": own.stats.completion_tokens,
                "total_tokens": own.stats.prompt_tokens + own.stats.completion_tokens,
            }
            assert sum(c["tokens"] for c in chunks) == 12 and end["receipt"] is None

            chat = [{"role": "user", "content": "Say hello"}]
            await ws.send_json({"type": "prompt", "id": "c1", "messages": chat, **settings})
            chat_end = (await until_done(ws, "c1"))[-1]
            assert chat_end["type"] == "end" and chat_end["usage"]["completion_tokens"] == 12

            # A long run; a second socket waits for the one slot.
            await ws.send_json(
                {"type": "prompt", "id": "long", "prompt": PROMPT, "max_tokens": LONG}
            )
            first = await receive(ws)
            assert first["type"] == "chunk"
            async with http.ws_connect(url(node, "/v1/ws")) as other:
                await other.send_json({"type": "init", "model": model.name, "api_key": KEY})
                assert (await receive(other))["mode"] == "operator"
                short = {"type": "prompt", "id": "o1", "prompt": PROMPT, "max_tokens": 3}
                await other.send_json(short)
                assert await receive(other) == {"type": "queued", "id": "o1", "position": 1}

                await ws.send_json({"type": "prompt", "id": "r2", "prompt": "x"})
                await ws.send_json({"type": "cancel", "id": "long"})
                messages = await until_done(ws, "long")
                [busy] = [m for m in messages if m.get("id") == "r2"]
                assert busy["type"] == "error" and busy["code"] == "busy"
                end = messages[-1]
                assert end["type"] == "end" and end["finish_reason"] == "cancelled"
                sent = first["tokens"] + sum(c["tokens"] for c in chunks_of(messages, "long"))
                assert end["usage"]["completion_tokens"] == sent  # the tokens it was sent
                assert 0 < end["usage"]["completion_tokens"] < LONG
                assert end["usage"]["prompt_tokens"] > 0 and end["receipt"] is None

                # The cancelled run freed the slot: the waiting socket's prompt now runs.
                done = (await until_done(other, "o1"))[-1]
                assert done["type"] == "end" and done["usage"]["completion_tokens"] == 3

            await ws.send_json({"type": "cancel", "id": "long"})
            assert (await receive(ws))["code"] == "unknown_request"

            # A client that leaves mid-run cancels it and frees the slot.
            finished = node.bus.subscribe(GenerationFinished)
            await ws.send_json(
                {"type": "prompt", "id": "gone", "prompt": PROMPT, "max_tokens": LONG}
            )
            assert (await receive(ws))["type"] == "chunk"
        async with asyncio.timeout(30):
            event = await finished.get()
        assert isinstance(event, GenerationFinished) and event.finish_reason == "cancelled"
        async with asyncio.timeout(30):
            while slots.busy:
                await asyncio.sleep(0.05)


async def test_the_first_token_is_sent_alone_and_the_rest_in_batches(tmp_path: Path) -> None:
    # A long batch interval: before, the first batch waited it out (or the stream's end), so
    # every time to first token carried the interval; now only later tokens are gathered.
    async with api_node(tmp_path) as node, aiohttp.ClientSession() as http:
        assert node.api is not None
        node.api.routes.engine.runner.batch_interval_s = 30.0
        async with http.ws_connect(url(node, "/v1/ws"), headers=bearer()) as ws:
            await ws.send_json({"type": "init", "model": model_id(node)})
            assert (await receive(ws))["type"] == "ready"
            ask = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0.0, "seed": 7}
            await ws.send_json({"type": "prompt", "id": "r1", **ask})
            chunks = chunks_of(await until_done(ws, "r1"), "r1")
        assert [c["tokens"] for c in chunks] == [1, 11]


async def test_refusals_close_the_socket_and_a_stopping_node_closes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        api_node(tmp_path, max_body_bytes=4096, requests_per_minute=4) as node,
        aiohttp.ClientSession() as http,
    ):
        endpoint = url(node, "/v1/ws")
        name = node.list_models()[0].name
        for init, code, close in [
            ({"model": name}, "missing_authorization", 4401),
            ({"model": name, "api_key": "not-the-key"}, "invalid_api_key", 4401),
            ({"model": "no-such-model", "api_key": KEY}, "model_not_found", 4404),
        ]:
            async with http.ws_connect(endpoint) as ws:
                await ws.send_json({"type": "prompt", "id": "early", "prompt": "x"})
                early = await receive(ws)
                assert early["code"] == "invalid_message" and "'init'" in early["message"]
                await ws.send_json({"type": "init", **init})
                error = await receive(ws)
                assert error["type"] == "error" and error["code"] == code
                assert error["status"] == close - 4000 and error["message"]
                assert await closed_with(ws) == close

        monkeypatch.setattr(ws_module, "INIT_TIMEOUT_S", 0.2)
        async with (
            aiohttp.ClientSession(connector=local("127.0.0.4")) as quiet,
            quiet.ws_connect(endpoint, headers=bearer()) as ws,
        ):
            error = await receive(ws)  # it never sends init
            assert (error["code"], error["status"]) == ("init_timeout", 408)
            assert await closed_with(ws) == 4408
            async with quiet.get(endpoint, headers=bearer()) as plain:  # no upgrade asked
                assert plain.status == 400
                assert (await plain.json())["error"]["code"] == "websocket_expected"

        async with http.ws_connect(endpoint, headers=bearer()) as ws:
            await ws.send_json({"type": "init", "model": name})
            assert (await receive(ws))["type"] == "ready"
            await ws.send_json({"type": "prompt", "id": "huge", "prompt": "x" * 8000})
            assert await closed_with(ws) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG

        # Another address (its own allowance of four a minute, shared with HTTP): the upgrade
        # takes one, three prompts run, the fourth is refused.
        async with (
            aiohttp.ClientSession(connector=local("127.0.0.2")) as flood,
            flood.ws_connect(endpoint, headers=bearer()) as ws,
            aiohttp.ClientSession(connector=local("127.0.0.3")) as third,
            third.ws_connect(endpoint, headers=bearer()) as busy,
        ):
            await ws.send_json({"type": "init", "model": name})
            assert (await receive(ws))["type"] == "ready"
            for n in range(3):
                prompt = {"type": "prompt", "id": f"p{n}", "prompt": "x", "max_tokens": 1}
                await ws.send_json(prompt)
                assert (await until_done(ws, f"p{n}"))[-1]["type"] == "end"
            await ws.send_json({"type": "prompt", "id": "p3", "prompt": "x", "max_tokens": 1})
            limited = await receive(ws)
            assert (limited["code"], limited["id"], limited["status"]) == (
                "rate_limited",
                "p3",
                429,
            )

            # The node stops with one socket idle and one mid-run: both are closed as "going
            # away" and stop() returns (the run is cancelled, not waited for).
            await busy.send_json({"type": "init", "model": name})
            assert (await receive(busy))["type"] == "ready"
            long = {"type": "prompt", "id": "long", "prompt": PROMPT, "max_tokens": LONG}
            await busy.send_json(long)
            assert (await receive(busy))["type"] == "chunk"
            async with asyncio.timeout(60):
                await node.stop()
            assert await closed_with(ws) == aiohttp.WSCloseCode.GOING_AWAY
            while (msg := await busy.receive()).type == aiohttp.WSMsgType.TEXT:
                assert json.loads(msg.data)["id"] == "long"  # chunks already on their way
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert msg.data == aiohttp.WSCloseCode.GOING_AWAY


def local(address: str) -> aiohttp.TCPConnector:
    """A connector whose requests come from `address` (its own per-address limits)."""
    return aiohttp.TCPConnector(local_addr=(address, 0))


# --- a paid session on anvil -----------------------------------------------------------------


def domain_of(rig: Rig) -> AuthDomain:
    d = rig.deployment
    return AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace)


def signed(rig: Rig, sid: int, prompt: str, key: bytes | None = None) -> dict[str, Any]:
    """The session client's (or `key`'s) signed request over this prompt, wire form."""
    request = sign_request(
        key or rig.client_key,
        domain_of(rig),
        host=rig.host,
        prompt=prompt,
        nonce=time.time_ns(),
        expiry=int(time.time()) + 300,
        session_id=sid,
    )
    return request.to_wire()


@pytest.mark.slow
async def test_a_paid_session_over_ws_chains_its_receipts_and_is_paid(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        node = await api_paid_node(rig, mode="auto")
        try:
            deposit = 10**15
            sid = open_session(rig, deposit, interval=40, timeout=3600)
            d = rig.deployment
            key = JobKey(JobKind.SESSION, d.chain_id, d.job_marketplace, str(sid))
            await until(lambda: (r := node.jobs.book.get(key)) and r.state == JobState.ACTIVE)
            model = "0x" + rig.model_sha
            endpoint = url(node, "/v1/ws")
            async with aiohttp.ClientSession() as http:
                stranger = bytes(anvil_account(3).key)
                async with http.ws_connect(endpoint) as ws:
                    auth = signed(rig, sid, "", key=stranger)
                    await ws.send_json(
                        {"type": "init", "model": model, "session_id": str(sid), "auth": auth}
                    )
                    error = await receive(ws)
                    assert (error["code"], error["status"]) == ("auth_wrong_signer", 403)
                    assert await closed_with(ws) == 4403

                async with http.ws_connect(endpoint) as ws:
                    auth = signed(rig, sid, "")
                    await ws.send_json(
                        {"type": "init", "model": model, "session_id": sid, "auth": auth}
                    )
                    ready = await receive(ws)
                    assert ready == {
                        "type": "ready",
                        "mode": "paid",
                        "session_id": str(sid),
                        "model": model,
                    }
                    await ws.send_json({"type": "prompt", "id": "unsigned", "prompt": PROMPT})
                    error = await receive(ws)
                    assert error["code"] == "invalid_message" and "'auth'" in error["message"]

                    prev, used = ZERO_HASH, 0
                    for n, prompt in enumerate((PROMPT, "The rain in Spain")):
                        ask = {"prompt": prompt, "max_tokens": 12, "temperature": 0.0}
                        auth = signed(rig, sid, prompt)
                        await ws.send_json({"type": "prompt", "id": f"p{n}", "auth": auth, **ask})
                        messages = await until_done(ws, f"p{n}")
                        end = messages[-1]
                        assert end["type"] == "end" and end["receipt"] is not None, end
                        assert "".join(c["text"] for c in chunks_of(messages, f"p{n}"))
                        receipt = parse_receipt(end["receipt"]).receipt
                        assert (receipt.session_id, receipt.job_id) == (sid, 0)
                        assert receipt.prev_receipt_hash == prev  # chained to the last
                        prev = "0x" + receipt_hash(receipt, domain_of(rig)).hex()
                        used += end["usage"]["total_tokens"]

            await until(lambda: session(rig, sid)["tokensProven"] == used, timeout=90)
            rig.send(rig.market.functions.completeSession(sid), rig.client)
            await until(lambda: node.jobs.book.get(key).state == JobState.COMPLETED)
            charge = min(used * PRICE // 1_000_000, deposit)
            paid = charge - charge * FEE_BPS // 10_000
            reference = f"session {sid}"
            credits = await until(
                lambda: [e.amount for e in node.earnings_entries() if e.reference == reference]
            )
            assert credits == [paid]
        finally:
            await node.stop()


async def test_a_cancel_after_the_run_ended_gets_the_real_end_not_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = ReceiptHold(monkeypatch)  # the run is over (and charged), its end not yet sent
    async with api_node(tmp_path) as node, aiohttp.ClientSession() as http:
        [model] = node.list_models()
        async with http.ws_connect(url(node, "/v1/ws"), headers=bearer()) as ws:
            await ws.send_json({"type": "init", "model": model.name})
            assert (await receive(ws))["type"] == "ready"
            await ws.send_json({"type": "prompt", "id": "r", "prompt": PROMPT, "max_tokens": 6})
            async with asyncio.timeout(60):
                await held.signing.wait()
            await ws.send_json({"type": "cancel", "id": "r"})
            await asyncio.sleep(0.2)  # the cancel is read while the receipt step is held
            held.go.set()
            messages = await until_done(ws, "r")
        ends = [m for m in messages if m["type"] == "end"]
        assert [e["finish_reason"] for e in ends] == ["length"]
        assert sum(c["tokens"] for c in chunks_of(messages, "r")) == 6
