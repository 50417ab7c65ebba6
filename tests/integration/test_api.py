"""The client HTTP API on a real node (real llama.cpp on the tiny GGUF, real sockets on
127.0.0.1): health, the model list, OpenAI completions whole and streamed (also through the
official `openai` client), operator-key auth, and the limits — each refusal a JSON error."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest
from api_kit import (
    KEY,
    PROMPT,
    api_node,
    bearer,
    data_of,
    error_of,
    model_id,
    sse_lines,
    url,
)

from fabstir_tui.engine.events import GenerationFinished
from fabstir_tui.engine.inference.stream import GenerationRequest


@pytest.fixture(autouse=True)
def operator_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABSTIR_API_KEY", KEY)


async def test_completions_match_the_engine_whole_streamed_and_through_openai(
    tmp_path: Path,
) -> None:
    async with api_node(tmp_path, load=False) as node, aiohttp.ClientSession() as http:
        async with http.get(url(node, "/health")) as response:
            assert response.status == 503
            body = await response.json()
            assert body["status"] == "unavailable" and "no model is loaded" in body["reason"]
        [model] = node.list_models()
        await node.load_model(model.path)
        async with http.get(url(node, "/health")) as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        async with http.get(url(node, "/v1/models")) as response:
            listed = await response.json()
        assert listed["object"] == "list"
        [card] = listed["data"]
        assert card["id"] == model_id(node) and card["name"] == model.name

        settings = {"max_tokens": 12, "temperature": 0.0, "seed": 7}
        expected = await node.generate(
            model.path, GenerationRequest(prompt=PROMPT, **settings)
        ).text()
        assert expected
        ask = {"model": model_id(node), "prompt": PROMPT, **settings}
        async with http.post(url(node, "/v1/completions"), json=ask, headers=bearer()) as r:
            assert r.status == 200, await r.text()
            whole = await r.json()
        assert whole["object"] == "text_completion"
        assert whole["choices"][0]["text"] == expected
        assert whole["usage"]["completion_tokens"] == 12
        assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"] + 12

        by_name = {**ask, "model": model.name, "stream": True}
        async with http.post(url(node, "/v1/completions"), json=by_name, headers=bearer()) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            lines = [line async for line in sse_lines(r)]
        assert lines[-1] == "data: [DONE]"
        chunks = [data_of(line) for line in lines[:-1]]
        assert len(chunks) >= 2
        assert "".join(c["choices"][0]["text"] for c in chunks) == expected
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"] == whole["usage"]

        from openai import AsyncOpenAI

        messages = [{"role": "user", "content": "Say hello"}]
        chat_expected = await node.generate(
            model.path,
            GenerationRequest(messages=({"role": "user", "content": "Say hello"},), **settings),
        ).text()
        client = AsyncOpenAI(base_url=url(node, "/v1"), api_key=KEY, max_retries=0)
        try:
            stream = await client.chat.completions.create(
                model=model_id(node),
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                **settings,  # type: ignore[arg-type]
            )
            received = [c async for c in stream]
        finally:
            await client.close()
        pieces = [c.choices[0].delta.content or "" for c in received if c.choices]
        assert "".join(pieces) == chat_expected and chat_expected
        counted = received[-1]  # include_usage: a last chunk with no choices, the usage
        assert counted.choices == [] and counted.usage is not None
        assert all(c.usage is None for c in received[:-1])  # once: summing clients count right
        used = counted.usage
        assert 0 < used.completion_tokens <= settings["max_tokens"]
        assert used.total_tokens == used.prompt_tokens + used.completion_tokens


async def test_requests_without_a_valid_key_are_refused_with_json(tmp_path: Path) -> None:
    async with api_node(tmp_path) as node, aiohttp.ClientSession() as http:
        ask = {"model": model_id(node), "prompt": PROMPT, "max_tokens": 2}
        endpoint = url(node, "/v1/completions")
        async with http.post(endpoint, json=ask) as response:
            assert response.status == 401
            assert (await error_of(response))["code"] == "missing_authorization"
        async with http.post(endpoint, json=ask, headers=bearer("not-the-key")) as response:
            assert response.status == 401
            assert (await error_of(response))["code"] == "invalid_api_key"
        junk = {"Authorization": "Fabstir !!not-base64-json!!"}
        async with http.post(endpoint, json=ask, headers=junk) as response:
            assert response.status == 401
            assert (await error_of(response))["code"] == "auth_malformed"
        # A signed request on a node with no job pipeline: no paid work here.
        from fabstir_tui.engine.p2p.request_auth import (
            AuthDomain,
            authorization_header,
            sign_request,
        )

        signed = sign_request(
            b"\x11" * 32,
            AuthDomain(chain_id=31337),
            host="0x" + "22" * 20,
            prompt=PROMPT,
            nonce=1,
            expiry=2**31,
            job_id=1,
        )
        paid = {"Authorization": authorization_header(signed)}
        async with http.post(endpoint, json={**ask, "job_id": "1"}, headers=paid) as response:
            assert response.status == 403
            assert (await error_of(response))["code"] == "pipeline_off"
        async with http.post(url(node, "/v1/nothing"), headers=bearer()) as response:
            assert response.status == 404
            await error_of(response)
        bad = {"model": "no-such-model", "prompt": PROMPT}
        async with http.post(endpoint, json=bad, headers=bearer()) as response:
            assert response.status == 404
            assert (await error_of(response))["code"] == "model_not_found"
        async with http.post(endpoint, data=b"{not json", headers=bearer()) as response:
            assert response.status == 400
            assert (await error_of(response))["code"] == "invalid_json"


async def test_limits_flood_body_size_context_and_cors(tmp_path: Path) -> None:
    allowed = "https://app.example"
    async with (
        api_node(
            tmp_path,
            ctx=256,
            requests_per_minute=5,
            max_body_bytes=4096,
            cors_allow_origins=[allowed],
        ) as node,
        aiohttp.ClientSession() as http,
    ):
        flood = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=flood) as other:
            statuses = []
            for _ in range(8):
                async with other.get(url(node, "/v1/models")) as response:
                    statuses.append(response.status)
                    if response.status == 429:
                        error = await error_of(response)
                        assert error["code"] == "rate_limited"
                        assert int(response.headers["Retry-After"]) >= 1
        assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
        async with http.get(url(node, "/v1/models")) as response:
            assert response.status == 200  # 127.0.0.1 has its own allowance

        huge = {"model": model_id(node), "prompt": "x" * 8000}
        async with http.post(url(node, "/v1/completions"), json=huge, headers=bearer()) as r:
            assert r.status == 413
            assert (await error_of(r))["code"] == "body_too_large"

        long_prompt = {"model": model_id(node), "prompt": "hello world " * 300, "max_tokens": 2}
        async with http.post(url(node, "/v1/completions"), json=long_prompt, headers=bearer()) as r:
            assert r.status == 400
            error = await error_of(r)
            assert error["code"] == "context_length_exceeded" and "256" in error["message"]

        preflight = {
            "Origin": allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, b@d",
        }
        async with http.options(url(node, "/v1/completions"), headers=preflight) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == allowed
            allow = [h.strip() for h in r.headers["Access-Control-Allow-Headers"].split(",")]
            assert "x-stainless-os" in allow and "Authorization" in allow
            assert "b@d" not in allow and "authorization" not in allow  # no junk, no repeats
        stranger = {**preflight, "Origin": "https://evil.example"}
        async with http.options(url(node, "/v1/completions"), headers=stranger) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Origin" not in r.headers
            assert (await error_of(r))["code"] == "origin_not_allowed"


async def test_connections_per_ip_are_capped(tmp_path: Path) -> None:
    async with (
        api_node(tmp_path, max_connections_per_ip=1) as node,
        aiohttp.ClientSession() as http,
    ):
        ask = {"model": model_id(node), "prompt": PROMPT, "max_tokens": 3000, "stream": True}
        async with http.post(url(node, "/v1/completions"), json=ask, headers=bearer()) as held:
            assert held.status == 200
            await held.content.readline()  # the first chunk: the request is in flight
            async with http.get(url(node, "/v1/models")) as response:
                assert response.status == 429
                assert (await error_of(response))["code"] == "too_many_connections"


async def test_a_client_that_leaves_frees_its_slot_and_its_place_in_the_queue(
    tmp_path: Path,
) -> None:
    async with api_node(tmp_path) as node, aiohttp.ClientSession() as http:
        [model] = node.list_models()
        slots = node.models.slot_queue(model.path)
        finished = node.bus.subscribe(GenerationFinished)
        endpoint = url(node, "/v1/completions")
        long = {"model": model_id(node), "prompt": PROMPT, "max_tokens": 3500, "stream": True}
        first = await http.post(endpoint, json=long, headers=bearer())
        second = await http.post(endpoint, json={**long, "max_tokens": 4}, headers=bearer())
        try:
            assert first.status == 200 and second.status == 200
            assert (await first.content.readline()).startswith(b"data: ")
            assert (await second.content.readline()) == b": queued 1\n"
            assert slots.busy == 1 and slots.waiting == 1
            second.close()  # the waiting client gives up: it leaves the queue
            async with asyncio.timeout(30):
                while slots.waiting:
                    await asyncio.sleep(0.05)
            first.close()  # the streaming client leaves: its generation stops
            async with asyncio.timeout(30):
                event = await finished.get()
            assert isinstance(event, GenerationFinished)
            assert event.finish_reason == "cancelled" and event.completion_tokens < 3500
            async with asyncio.timeout(30):
                while slots.busy:
                    await asyncio.sleep(0.05)
        finally:
            for response in (first, second):
                with contextlib.suppress(Exception):
                    response.close()
        short = {"model": model_id(node), "prompt": PROMPT, "max_tokens": 3}
        async with http.post(endpoint, json=short, headers=bearer()) as response:
            assert response.status == 200  # the slot is free again
            assert (await response.json())["usage"]["completion_tokens"] == 3
