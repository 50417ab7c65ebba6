"""One streamed OpenAI completion, timed from the client's side, against any server that speaks
POST /v1/completions with `"stream": true` (ours, llama_cpp.server, llama.cpp's llama-server):
the same client for every side, so the figures differ only by the server.

Time to first token is from just before the request is sent to the first chunk that carries
text; the wall time runs to the end of the stream. The completion token count comes from the
server's own figure when it gives one (OpenAI `usage`, or llama-server's `timings.predicted_n`)
and is otherwise the number of text chunks; `tokens_from` says which.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

SEED = 1234
TokensFrom = Literal["usage", "timings", "chunks"]


class StreamError(RuntimeError):
    """The server refused the request or the stream broke off; the message has its answer."""


@dataclass(frozen=True, slots=True)
class StreamResult:
    """One stream's client-side figures and its text."""

    ttft_s: float
    wall_s: float
    completion_tokens: int
    tokens_from: TokensFrom
    chunks: int
    text: str
    finish_reason: str | None

    @property
    def tokens_per_s(self) -> float:
        """End-to-end rate, as a client sees it: prompt processing included."""
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """The rate after the first token: generation alone."""
        after_first = self.wall_s - self.ttft_s
        return (self.completion_tokens - 1) / after_first if after_first > 0 else 0.0


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _chunk_text(chunk: Mapping[str, Any]) -> tuple[str, str | None]:
    """The text and finish reason of a completion (or chat) chunk; empty when it has none."""
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return "", None
    choice = choices[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content")
    return (text if isinstance(text, str) else ""), choice.get("finish_reason")


async def first_model_id(
    session: aiohttp.ClientSession, base_url: str, api_key: str | None = None
) -> str:
    """The id of the first model GET /v1/models lists (ours needs it in every request)."""
    async with session.get(base_url + "/v1/models", headers=_headers(api_key)) as response:
        if response.status != 200:
            raise StreamError(f"GET /v1/models: {response.status} {await response.text()}")
        body = await response.json()
    models = body.get("data") or []
    if not models:
        raise StreamError("GET /v1/models lists no model")
    return str(models[0]["id"])


async def stream_completion(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    prompt: str,
    max_tokens: int,
    api_key: str | None = None,
    model: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> StreamResult:
    """POST /v1/completions with stream=true, greedy and a fixed seed, and time the stream."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": SEED,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model is not None:
        body["model"] = model
    body.update(extra or {})
    pieces: list[str] = []
    chunks = 0
    ttft: float | None = None
    finish: str | None = None
    usage_tokens: int | None = None
    timings_tokens: int | None = None
    started = time.perf_counter()
    async with session.post(
        base_url + "/v1/completions", json=body, headers=_headers(api_key)
    ) as response:
        if response.status != 200:
            raise StreamError(f"POST /v1/completions: {response.status} {await response.text()}")
        done = False
        async for raw in response.content:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue  # blank separators and SSE comments (": queued 2", ": ping")
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise StreamError(f"the stream carried an error: {chunk['error']}")
            text, reason = _chunk_text(chunk)
            finish = reason or finish
            if text:
                chunks += 1
                pieces.append(text)
                if ttft is None:
                    ttft = time.perf_counter() - started
            usage = chunk.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                usage_tokens = int(usage["completion_tokens"])
            timings = chunk.get("timings")
            if isinstance(timings, dict) and isinstance(timings.get("predicted_n"), int):
                timings_tokens = int(timings["predicted_n"])
        if not done:
            raise StreamError("the stream ended without data: [DONE]")
    wall = time.perf_counter() - started
    if ttft is None:
        raise StreamError("the stream carried no text")
    tokens_from: TokensFrom
    if usage_tokens is not None:
        tokens, tokens_from = usage_tokens, "usage"
    elif timings_tokens is not None:
        tokens, tokens_from = timings_tokens, "timings"
    else:
        tokens, tokens_from = chunks, "chunks"
    return StreamResult(
        ttft_s=ttft,
        wall_s=wall,
        completion_tokens=tokens,
        tokens_from=tokens_from,
        chunks=chunks,
        text="".join(pieces),
        finish_reason=finish,
    )
