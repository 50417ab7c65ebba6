"""Paid work over the HTTP API on a real devnet: the job's poster signs its request
(`Authorization: Fabstir ...`), the node serves a claimed job exactly as over P2P, and the
run's end is submitted on-chain; other jobs, other signers and paid chat are refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from api_kit import ReceiptHold
from eth_utils.crypto import keccak
from pipeline_kit import Rig, api_paid_node, make_rig, until

from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.chain.anvil import anvil_account
from fabstir_tui.engine.p2p.request_auth import AuthDomain, authorization_header, sign_request
from fabstir_tui.engine.serving import links

PROMPT = "Once upon a time"
SUBMITTED = 3  # JobMarketplace.JobStatus


def signed_headers(rig: Rig, job_id: int, prompt: str, key: bytes | None = None) -> dict[str, str]:
    """The poster's (or `key`'s) signed request for a job, as the Authorization header."""
    d = rig.deployment
    signed = sign_request(
        key or rig.client_key,
        AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace),
        host=rig.host,
        prompt=prompt,
        nonce=time.time_ns(),
        expiry=int(time.time()) + 300,
        job_id=job_id,
    )
    return {"Authorization": authorization_header(signed)}


def paid_ask(rig: Rig, job_id: int, **extra: Any) -> dict[str, Any]:
    """A greedy completion of PROMPT for the job, by the model it was posted for."""
    ask = {"model": "0x" + rig.model_sha, "prompt": PROMPT, "temperature": 0.0}
    return {**ask, "job_id": str(job_id), **extra}


@pytest.mark.slow
async def test_a_signed_completion_for_a_claimed_job_is_served_and_submitted(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        node = await api_paid_node(rig)
        try:
            assert node.api is not None
            endpoint = node.api.url + "/v1/completions"
            job_id = rig.post(PROMPT)
            other_id = rig.post("a job this node never claimed")
            streamed_id = rig.post(PROMPT)
            await until(lambda: len(node.jobs_snapshot().market) == 3)
            await node.claim_job(rig.key(job_id))
            await node.claim_job(rig.key(streamed_id))
            ask = paid_ask(rig, job_id, max_tokens=16)
            async with aiohttp.ClientSession() as http:
                other = {**ask, "prompt": "a job this node never claimed", "job_id": other_id}
                headers = signed_headers(rig, other_id, other["prompt"])
                async with http.post(endpoint, json=other, headers=headers) as r:
                    assert r.status == 403
                    assert (await r.json())["error"]["code"] == "not_claimed"

                stranger = bytes(anvil_account(3).key)
                headers = signed_headers(rig, job_id, PROMPT, key=stranger)
                async with http.post(endpoint, json=ask, headers=headers) as r:
                    assert r.status == 403
                    assert (await r.json())["error"]["code"] == "auth_wrong_signer"

                chat = {"model": ask["model"], "messages": [{"role": "user", "content": PROMPT}]}
                headers = signed_headers(rig, job_id, PROMPT)
                async with http.post(
                    node.api.url + "/v1/chat/completions",
                    json={**chat, "job_id": job_id},
                    headers=headers,
                ) as r:
                    assert r.status == 400
                    assert (await r.json())["error"]["code"] == "paid_chat_unsupported"

                headers = signed_headers(rig, job_id, PROMPT)
                async with http.post(endpoint, json={**ask, "stop": ["\n"]}, headers=headers) as r:
                    assert r.status == 400
                    assert (await r.json())["error"]["code"] == "paid_stop_unsupported"

                headers = {
                    **signed_headers(rig, job_id, PROMPT),
                    "X-Fabstir-Job": str(job_id),
                }
                by_header = {k: v for k, v in ask.items() if k != "job_id"}
                async with http.post(endpoint, json=by_header, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    served = await r.json()
                text = served["choices"][0]["text"]
                assert text and served["fabstir"]["receipt"] is not None
                used = served["usage"]["total_tokens"]

                await until(lambda: rig.job(job_id)["status"] == SUBMITTED)
                on_chain = rig.job(job_id)
                assert on_chain["outputHash"] == keccak(text.encode("utf-8"))
                assert on_chain["tokensUsed"] == used

                # Its answer was cut off? Asking again replays it; nothing re-runs.
                headers = signed_headers(rig, job_id, PROMPT)
                async with http.post(endpoint, json=ask, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    again = await r.json()
                assert again["choices"][0]["text"] == text
                assert again["fabstir"]["replayed"] is True

                # Streamed: the receipt and the usage ride in the last chunk.
                headers = signed_headers(rig, streamed_id, PROMPT)
                streamed = {**ask, "job_id": streamed_id, "stream": True}
                async with http.post(endpoint, json=streamed, headers=headers) as r:
                    assert r.status == 200
                    lines = [ln.decode().strip() async for ln in r.content if ln.strip()]
                assert lines[-1] == "data: [DONE]"
                chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
                assert "".join(c["choices"][0]["text"] for c in chunks) == text  # greedy
                assert chunks[-1]["fabstir"]["receipt"] is not None
                await until(lambda: rig.job(streamed_id)["status"] == SUBMITTED)
        finally:
            await node.stop()


@pytest.mark.slow
async def test_a_client_gone_while_its_receipt_is_signed_still_has_its_job_submitted(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = ReceiptHold(monkeypatch)  # the client leaves between the run's end and its record
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        node = await api_paid_node(rig)
        try:
            assert node.api is not None
            job_id = rig.post(PROMPT)
            await until(lambda: len(node.jobs_snapshot().market) == 1)
            await node.claim_job(rig.key(job_id))
            ask = paid_ask(rig, job_id, max_tokens=8, stream=True)

            async def client() -> None:
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(
                        node.api.url + "/v1/completions",
                        json=ask,
                        headers=signed_headers(rig, job_id, PROMPT),
                    ) as r,
                ):
                    async for _ in r.content:
                        pass

            reading = asyncio.create_task(client())
            await until(held.signing.is_set, doing="the run's end")
            reading.cancel()  # the client leaves while its receipt is being signed
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            api = node.api_status
            await until(lambda: (s := api()) is not None and s.open_requests == 0)
            held.go.set()
            await until(lambda: rig.job(job_id)["status"] == SUBMITTED, doing="the submit")
            assert node.jobs is not None and not node.jobs.runs.active(rig.key(job_id))
        finally:
            held.go.set()
            await node.stop()


@pytest.mark.slow
async def test_a_stream_cut_at_its_deadline_keeps_every_token_made_then_says_why(
    tmp_path: Path, smollm_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Instrumentation, not a double: the text the runner had made when it cut the run.
    made: list[str] = []
    cut = links.cut

    def noted_cut(node: Any, job: Any, why: str) -> None:
        made.append("".join(job.output))
        cut(node, job, why)

    monkeypatch.setattr(links, "cut", noted_cut)
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, smollm_gguf, tmp_path)
        node = await api_paid_node(rig)
        try:
            assert node.api is not None and node.jobs is not None
            job_id = rig.post(PROMPT, max_tokens=3000, ttl=120)
            key = rig.key(job_id)
            await until(lambda: any(v.key == key for v in node.jobs_snapshot().market))
            await node.claim_job(key)
            await until(lambda: not node.jobs.book.pending_effects())
            ask = paid_ask(rig, job_id, max_tokens=3000, stream=True)
            events: list[dict[str, Any]] = []
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    node.api.url + "/v1/completions",
                    json=ask,
                    headers=signed_headers(rig, job_id, PROMPT),
                ) as r,
            ):
                assert r.status == 200
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    events.append(json.loads(line.removeprefix("data: ")))
                    if len(events) == 1:  # streaming: the chain's clock passes the deadline
                        await asyncio.to_thread(rig.advance, 300)
            *chunks, last = events
            assert last["error"]["code"] == "deadline_passed"
            text = "".join(c["choices"][0]["text"] for c in chunks)
            assert made == [text] and text  # the cut batch's tokens reached the client too
            assert rig.job(job_id)["status"] != SUBMITTED
            api = node.api_status()
            assert api is not None
            assert {(c.route, c.code): c.count for c in api.requests} == {
                ("/v1/completions", 403): 1
            }
        finally:
            await node.stop()


@pytest.mark.slow
async def test_a_second_request_for_a_job_already_queued_is_busy_and_the_first_is_served(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        node = await api_paid_node(rig)
        try:
            assert node.api is not None
            endpoint = node.api.url + "/v1/completions"
            job_id = rig.post(PROMPT)
            await until(lambda: len(node.jobs_snapshot().market) == 1)
            await node.claim_job(rig.key(job_id))
            ask = paid_ask(rig, job_id, max_tokens=8)
            [model] = node.list_models()
            lease = await node.models.slot_queue(model.path).acquire()  # the first must wait
            async with aiohttp.ClientSession() as http:
                first = await http.post(
                    endpoint,
                    json={**ask, "stream": True},
                    headers=signed_headers(rig, job_id, PROMPT),
                )
                try:
                    assert first.status == 200
                    assert (await first.content.readline()) == b": queued 1\n"
                    headers = signed_headers(rig, job_id, PROMPT)
                    async with http.post(endpoint, json=ask, headers=headers) as second:
                        assert second.status == 409, await second.text()
                        assert (await second.json())["error"]["code"] == "busy"
                finally:
                    lease.release()
                lines = [ln.decode().strip() async for ln in first.content if ln.strip()]
                first.release()
            assert lines[-1] == "data: [DONE]"
            await until(lambda: rig.job(job_id)["status"] == SUBMITTED, doing="the submit")
        finally:
            await node.stop()
