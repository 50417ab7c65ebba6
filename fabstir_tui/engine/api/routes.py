"""The API's handlers: health, the model list, and OpenAI completions and chat completions,
whole or streamed as server-sent events (with `: queued <n>` comments while waiting)."""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fabstir_tui.engine.api.auth import credentials
from fabstir_tui.engine.api.errors import ApiError, error_body
from fabstir_tui.engine.api.limits import RateLimiter
from fabstir_tui.engine.api.runs import HttpJobs, Located, batch_error, loaded_models
from fabstir_tui.engine.api.shapes import Ask, Kind, Reply, finish_reason, parse_ask, usage
from fabstir_tui.engine.api.traffic import failed_late
from fabstir_tui.engine.api.ws import WsSessions
from fabstir_tui.engine.jobs.runs import Replay
from fabstir_tui.engine.p2p.messages import EndFrame

if TYPE_CHECKING:
    from fabstir_tui.engine.node import Node
    from fabstir_tui.engine.serving.turns import Pending

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a reverse proxy must not hold the chunks back
}


def _sse(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def _usage_and_done(reply: Reply, counts: dict[str, int], include_usage: bool) -> bytes:
    """A stream's close: OpenAI's usage chunk when stream_options asked for it, then [DONE]."""
    usage_event = _sse(reply.usage_chunk(counts)) if include_usage else b""
    return usage_event + _sse("[DONE]")


def _extra(end: EndFrame) -> dict[str, Any]:
    """Our additions to OpenAI's shape: the signed receipt of a paid run."""
    return {"fabstir": {"receipt": end.receipt}} if end.receipt is not None else {}


class Routes:
    """Handlers bound to one node; the operator key is held here, never logged."""

    def __init__(self, node: Node, api_key: str | None, limiter: RateLimiter) -> None:
        self.node = node
        self.engine = HttpJobs(node)
        self._api_key = api_key
        self.limiter = limiter

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        sockets = WsSessions(self.node, self.engine, self._api_key, self.limiter)
        app.router.add_get("/v1/ws", sockets.mount(app))

    # --- read-only ---------------------------------------------------------------------

    def _unready(self) -> str | None:
        """Why the node cannot serve a completion now, or None."""
        if self.node.state != "running":
            return f"the node is {self.node.state}"
        loading = self.node.models.loading()
        if loading:
            return "a model is loading: " + ", ".join(p.rsplit("/", 1)[-1] for p in loading)
        if not self.node.loaded_models():
            return "no model is loaded"
        return None

    async def health(self, request: web.Request) -> web.Response:
        why = self._unready()
        models = (
            [_card(m) for m in loaded_models(self.node)] if self.node.state == "running" else []
        )
        if why is not None:
            body = {"status": "unavailable", "reason": why, "models": models}
            return web.json_response(body, status=503, headers={"Retry-After": "5"})
        body = {"status": "ok", "node": self.node.config.node.name, "models": models}
        return web.json_response(body)

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {**_card(m), "object": "model", "owned_by": self.node.config.node.name, "created": 0}
            for m in loaded_models(self.node)
        ]
        return web.json_response({"object": "list", "data": data})

    # --- completions -------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completion")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def _serve(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        caller = credentials(request.headers.get("Authorization"), self._api_key)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, LookupError) as exc:  # bad charset
            raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
        ask = parse_ask(kind, body, request.headers)
        if self.node.state != "running":  # a model loading elsewhere does not stop this one
            why = f"the node is {self.node.state}"
            raise ApiError(503, "not_ready", why, headers={"Retry-After": "5"})
        pending, located = await self.engine.admit(ask, caller)
        reply = Reply(kind, located.model_id)
        if isinstance(pending, Replay):
            return await self._replayed(request, pending, reply, ask)
        if ask.stream:
            return await self._stream(request, pending, reply, ask.include_usage)
        return await self._whole(pending, reply)

    async def _whole(self, pending: Pending, reply: Reply) -> web.Response:
        job = await self.engine.wait_for_slot(pending)
        text: list[str] = []
        end: EndFrame | None = None
        async with aclosing(self.engine.batches(job)) as batches:
            async for batch in batches:
                if batch.error is not None:
                    raise batch_error(batch)
                text.extend(batch.pieces)
                end = batch.end
        assert end is not None
        body = reply.whole(
            "".join(text),
            finish_reason(end.finish_reason),
            usage(end.prompt_tokens, end.completion_tokens),
            _extra(end),
        )
        return web.json_response(body)

    async def _replayed(
        self, request: web.Request, replay: Replay, reply: Reply, ask: Ask
    ) -> web.StreamResponse:
        """A delivered job asked again: its archived answer and receipt, nothing re-runs."""
        done = replay.archived
        counts = usage(done.prompt_tokens, done.completion_tokens)
        extra = {"fabstir": {"receipt": done.receipt, "replayed": True}}
        if not ask.stream:
            return web.json_response(reply.whole(done.output, "stop", counts, extra))
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        on_tail = None if ask.include_usage else counts  # a usage chunk follows: usage once
        tail = reply.chunk(done.output, first=True, finish="stop", usage=on_tail, extra=extra)
        await response.write(_sse(tail) + _usage_and_done(reply, counts, ask.include_usage))
        return response

    async def _stream(
        self, request: web.Request, pending: Pending, reply: Reply, include_usage: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE_HEADERS)

        async def opened() -> None:
            if not response.prepared:
                await response.prepare(request)

        async def queued(position: int) -> None:
            await opened()
            await response.write(f": queued {position}\n\n".encode())

        try:
            job = await self.engine.wait_for_slot(pending, queued)
            first = True
            async with aclosing(self.engine.batches(job)) as batches:
                async for batch in batches:
                    await opened()
                    if batch.pieces:  # an error's batch too: the client keeps what was made
                        await response.write(_sse(reply.chunk("".join(batch.pieces), first=first)))
                        first = False
                    if batch.error is not None:
                        raise batch_error(batch)
                    end = batch.end
                    if end is not None:
                        counts = usage(end.prompt_tokens, end.completion_tokens)
                        tail = reply.chunk(
                            None,
                            first=first,
                            finish=finish_reason(end.finish_reason),
                            usage=None if include_usage else counts,  # else in its chunk
                            extra=_extra(end),
                        )
                        done = _usage_and_done(reply, counts, include_usage)
                        await response.write(_sse(tail) + done)
        except ApiError as exc:
            if not response.prepared:
                raise
            failed_late(request, exc.status, exc.code)
            await response.write(_sse(error_body(exc.status, exc.code, exc.message)))
        except ConnectionResetError:
            return response  # the client left; its run was cancelled and its slot freed
        except Exception as exc:  # our bug, after the 200 went out: an error event, not a
            if not response.prepared:  # second response written into the stream's body
                raise
            self.node.log("error", "api", f"a stream failed: {type(exc).__name__}: {exc}")
            failed_late(request, 500, "internal")
            body = error_body(500, "internal", "the node could not finish this stream")
            await response.write(_sse(body))
        return response


def _card(model: Located) -> dict[str, Any]:
    """A model as the API names it: id (0x SHA-256), name, context size."""
    return {
        "id": model.model_id,
        "name": model.name,
        "sha256": model.sha256,
        "context_length": model.model.n_ctx,
    }
