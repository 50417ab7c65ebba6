"""`GET /v1/ws`: the session protocol (DESIGN §7) — one WebSocket carries a client's prompts
one after another, each streamed back in chunks, with the same checks as the HTTP API.

Every message is a JSON text frame with a `type`.

Opening (the first message must be `init`, within INIT_TIMEOUT_S):
  client → {"type": "init", "model": "0x<sha256>" | name, "session_id": "7", "auth": {...}}
           paid: `auth` is the DESIGN §11.6 signed JobRequest for that session over the empty
           prompt "", judged exactly like a paid request (the pipeline's session checks, signed
           by the session's client, fresh nonce), so a stranger is refused before any prompt.
  client → {"type": "init", "model": ..., "api_key": "<key>"}
           operator (free): the key in the init message (browsers cannot set WebSocket
           headers; never in the URL) or `Authorization: Bearer <key>` on the upgrade request.
  server → {"type": "ready", "mode": "paid" | "operator", "session_id": "7" | null,
            "model": "0x<sha256>"}
  refused → {"type": "error", "code", "message", "status"} and the socket is closed with code
            4000 + status (4401 no/wrong key, 4403 not this session's client, 4404 no such
            model or session, 4408 no init in time, 4409 busy...; 1011 for a 5xx).

Requests (one at a time):
  client → {"type": "prompt", "id": "r1", "prompt": "...", "max_tokens", "temperature",
            "seed", "stop", "auth": {signed over this prompt}}
           `auth` is required when paid; the operator may send "messages": [...] (chat)
           instead of "prompt". The fields are checked as in /v1/completions.
  server → {"type": "queued", "id", "position"} while waiting for a slot (on each change),
           {"type": "chunk", "id", "text", "tokens"} per batch (the tokens add up to
           completion_tokens), then
           {"type": "end", "id", "finish_reason": "stop" | "length", "usage": {"prompt_tokens",
            "completion_tokens", "total_tokens"}, "receipt": {...} | null}.
  failed → {"type": "error", "id", "code", "message", "status"}; the connection stays open.
  client → {"type": "cancel", "id": "r1"}: the request stops (its slot freed) and the server
           sends {"type": "end", "id", "finish_reason": "cancelled", "usage": {so far},
           "receipt": null}.
  A second prompt while one is queued or running → error `busy` (409). Each prompt counts
  against the per-minute rate limit of the client's address → error `rate_limited` (429).

Malformed JSON, an unknown type or a bad field → error `invalid_message` naming the field
(with the `id` when the message had one); the connection stays open. A message larger than
api.max_body_bytes closes the socket with 1009. A client that disconnects cancels its run and
frees its slot. The node stopping closes every socket with 1001 (going away).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

from fabstir_tui.engine.api import ws_messages as wire
from fabstir_tui.engine.api.auth import Credentials, admit_paid, credentials
from fabstir_tui.engine.api.errors import ApiError
from fabstir_tui.engine.api.limits import RateLimiter, client_ip
from fabstir_tui.engine.api.runs import HttpJobs, Located, batch_error, locate
from fabstir_tui.engine.api.shapes import finish_reason
from fabstir_tui.engine.jobs.runs import Replay
from fabstir_tui.engine.p2p.messages import JobRequest

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

    from fabstir_tui.engine.api.shapes import Ask
    from fabstir_tui.engine.node import Node
    from fabstir_tui.engine.serving.links import RunningJob

HEARTBEAT_S = 30.0  # pings keep proxies from dropping an idle session and find dead peers
INIT_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 2.0  # how long a close waits for the client's close frame
CLEANUP_TIMEOUT_S = 10.0
_OPEN = (WSMsgType.TEXT, WSMsgType.BINARY)


@dataclass(frozen=True, slots=True)
class _Session:
    """What `init` established: who pays (a session id) or the operator, and the model."""

    mode: str
    model: Located
    session_id: str | None

    @property
    def paid(self) -> bool:
        return self.mode == "paid"


@dataclass(slots=True)
class _Run:
    """The request in flight: its task, its job once started and the tokens sent so far."""

    id: str
    task: asyncio.Task[None] | None = None
    job: RunningJob | None = None
    tokens: int = 0
    ended: bool = False  # its end or error was sent
    positions: list[int] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.task is not None and not self.task.done()


class WsSessions:
    """The /v1/ws endpoint of one app: its sockets (closed when the node stops) and the
    per-address prompt limit."""

    def __init__(
        self, node: Node, engine: HttpJobs, api_key: str | None, limiter: RateLimiter
    ) -> None:
        self.node = node
        self.engine = engine
        self._api_key = api_key
        self.section = node.config.api
        self.limiter = limiter  # the HTTP middleware's: the upgrade and each prompt count
        self._open: set[web.WebSocketResponse] = set()

    def mount(self, app: web.Application) -> Handler:
        """The handler for `GET /v1/ws`; the app's shutdown closes every open socket."""
        app.on_shutdown.append(self._close_all)
        return self.handle

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Upgrade, serve the socket until either side closes, forget it."""
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT_S,
            max_msg_size=self.section.max_body_bytes,
            timeout=CLOSE_TIMEOUT_S,
        )
        if not ws.can_prepare(request).ok:
            raise ApiError(400, "websocket_expected", "GET /v1/ws is a WebSocket upgrade")
        await ws.prepare(request)
        self._open.add(ws)
        try:
            await _Connection(self, request, ws).serve()
        except Exception as exc:  # our bug outside a request: say so and close with 1011
            self.node.log("error", "api", f"a WebSocket failed: {type(exc).__name__}: {exc}")
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_json(wire.error("internal", "the node could not go on", 500))
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
        finally:
            self._open.discard(ws)
            if not ws.closed:
                await ws.close()
        return ws

    async def _close_all(self, app: web.Application) -> None:
        """The node is stopping: every client is told so, none holds the shutdown up."""
        sockets = list(self._open)
        await asyncio.gather(
            *(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"the node is stopping")
                for ws in sockets
            ),
            return_exceptions=True,
        )

    def operator(self, request: web.Request, init: wire.Init) -> Credentials:
        """The operator's key (init message first, else the upgrade's header), or a 401."""
        header = (
            f"Bearer {init.api_key}"
            if init.api_key is not None
            else request.headers.get("Authorization")
        )
        if not header:
            raise ApiError(
                401,
                "missing_authorization",
                "send the operator's 'api_key', or a 'session_id' with its signed 'auth', in the "
                "init message (or 'Authorization: Bearer <key>' on the upgrade request)",
            )
        caller = credentials(header, self._api_key)
        if caller.paid_auth is not None:
            raise ApiError(
                401,
                "unsupported_authorization",
                "on /v1/ws a session's signed auth goes in the init message with its session_id",
            )
        return caller


class _Connection:
    """One client's socket: the init handshake, then a read loop; a prompt runs in its own
    task so a cancel (or a second prompt, refused as busy) is read while it streams."""

    def __init__(self, owner: WsSessions, request: web.Request, ws: web.WebSocketResponse):
        self.owner = owner
        self.node = owner.node
        self.engine = owner.engine
        self.request = request
        self.ws = ws
        self._send_lock = asyncio.Lock()
        self.run: _Run | None = None

    async def send(self, message: dict[str, Any]) -> bool:
        """Send one message; False when the client has gone (its reader ends the loop)."""
        if self.ws.closed:
            return False
        async with self._send_lock:
            try:
                await self.ws.send_json(message)
            except ConnectionResetError:
                return False
        return True

    async def serve(self) -> None:
        """Open the session, then act on each message until the socket closes."""
        session = await self._open_session()
        if session is None:
            return
        try:
            async for msg in self.ws:
                if msg.type in _OPEN:
                    await self._on_message(msg.data, session)
        finally:
            run = self.run
            if run is not None and run.task is not None and not run.task.done():
                run.task.cancel()  # the client left: its run is cancelled, its slot freed
                await asyncio.wait({run.task}, timeout=CLEANUP_TIMEOUT_S)

    # --- opening ---------------------------------------------------------------------------

    async def _open_session(self) -> _Session | None:
        """Wait for `init` and judge it; a refusal is sent, then the socket is closed."""
        try:
            async with asyncio.timeout(INIT_TIMEOUT_S):
                init = await self._read_init()
        except TimeoutError:
            init_late = f"no 'init' message within {INIT_TIMEOUT_S:g} s"
            await self._refuse(ApiError(408, "init_timeout", init_late))
            return None
        if init is None:
            return None
        try:
            session = await self._admit(init)
        except ApiError as exc:
            await self._refuse(exc)
            return None
        await self.send(wire.ready(session.mode, session.session_id, session.model.model_id))
        return session

    async def _read_init(self) -> wire.Init | None:
        """The first `init`; other messages are refused meanwhile. None: the socket closed."""
        while True:
            msg = await self.ws.receive()
            if msg.type not in _OPEN:
                return None  # closed, or too large (aiohttp closed it with 1009)
            try:
                parsed = wire.parse_message(msg.data)
            except wire.InvalidMessage as exc:
                await self.send(wire.error(wire.INVALID, exc.message, 400, exc.request_id))
                continue
            if isinstance(parsed, wire.Init):
                return parsed
            why = "field 'type': the first message must be 'init'"
            await self.send(wire.error(wire.INVALID, why, 400, getattr(parsed, "id", None)))

    async def _admit(self, init: wire.Init) -> _Session:
        """Judge `init` as the HTTP API judges a request: the key, or the session's auth."""
        if self.node.state != "running":
            raise ApiError(503, "not_ready", f"the node is {self.node.state}")
        if not init.paid:
            self.owner.operator(self.request, init)
            return _Session("operator", locate(self.node, init.model), None)
        located = locate(self.node, init.model)
        if located.sha256 is None:
            raise ApiError(503, "model_hashing", f"{located.name} is still being hashed")
        opening = JobRequest(
            model_id=located.sha256,
            prompt="",
            max_tokens=1,
            session_id=init.session_id,
            auth=init.auth,
        )
        checked = await admit_paid(self.engine.runner, opening)
        if isinstance(checked, Replay):  # only open jobs replay; a session never does
            raise ApiError(400, "not_a_session", "the init message must name a session")
        return _Session("paid", located, init.session_id)

    async def _refuse(self, exc: ApiError) -> None:
        """Say why, then close with 4000 + status so even a client that missed it knows."""
        await self.send(wire.error(exc.code, exc.message, exc.status))
        await self.ws.close(code=wire.close_code(exc.status), message=exc.code.encode()[:120])

    # --- requests ----------------------------------------------------------------------------

    async def _on_message(self, data: str | bytes, session: _Session) -> None:
        """One message after `init`: a prompt starts, a cancel stops, anything else is refused."""
        try:
            parsed = wire.parse_message(data)
        except wire.InvalidMessage as exc:
            await self.send(wire.error(wire.INVALID, exc.message, 400, exc.request_id))
            return
        if isinstance(parsed, wire.Init):
            why = "field 'type': this socket's session is open already ('init' is sent once)"
            await self.send(wire.error(wire.INVALID, why, 400))
        elif isinstance(parsed, wire.Cancel):
            await self._cancel(parsed.id)
        else:
            await self._start(parsed, session)

    async def _start(self, prompt: wire.Prompt, session: _Session) -> None:
        """Check the prompt (busy, auth, fields, rate) and run it in its own task."""
        busy = self.run
        if busy is not None and busy.active:
            why = f"request {busy.id!r} is still running: wait for its end or cancel it"
            await self.send(wire.error("busy", why, 409, prompt.id))
            return
        if session.paid and prompt.auth is None:
            why = "field 'auth': a paid session signs every prompt (DESIGN §11.6)"
            await self.send(wire.error(wire.INVALID, why, 400, prompt.id))
            return
        try:
            ask = wire.ask_for(prompt, session.model.model_id, session.session_id)
        except wire.InvalidMessage as exc:
            await self.send(wire.error(wire.INVALID, exc.message, 400, prompt.id))
            return
        wait = self.owner.limiter.take(client_ip(self.request))
        if wait > 0:
            why = (
                f"more than {self.owner.limiter.per_minute} prompts a minute from this address; "
                f"retry in {math.ceil(wait)} s"
            )
            await self.send(wire.error("rate_limited", why, 429, prompt.id))
            return
        run = _Run(prompt.id)
        caller = Credentials(paid_auth=prompt.auth if session.paid else None)
        run.task = asyncio.create_task(self._serve_prompt(run, ask, caller))
        self.run = run

    async def _serve_prompt(self, run: _Run, ask: Ask, caller: Credentials) -> None:
        """Admit, wait for a slot, stream; whatever fails ends this request, not the socket."""
        try:
            pending, _located = await self.engine.admit(ask, caller)
            if isinstance(pending, Replay):
                done = pending.archived
                await self.send(wire.chunk(run.id, done.output, done.completion_tokens))
                await self._end(
                    run, "stop", done.prompt_tokens, done.completion_tokens, done.receipt
                )
                return

            async def on_position(position: int) -> None:
                if not run.positions or run.positions[-1] != position:
                    run.positions.append(position)
                    await self.send(wire.queued(run.id, position))

            job = await self.engine.wait_for_slot(pending, on_position)
            run.job = job
            async with aclosing(self.engine.batches(job)) as batches:
                async for batch in batches:
                    if batch.pieces or batch.tokens:  # an error's batch too: keep what was made
                        run.tokens += batch.tokens
                        await self.send(wire.chunk(run.id, "".join(batch.pieces), batch.tokens))
                    if batch.error is not None:
                        raise batch_error(batch)
                    end = batch.end
                    if end is not None:
                        reason = finish_reason(end.finish_reason)
                        await self._end(
                            run, reason, end.prompt_tokens, end.completion_tokens, end.receipt
                        )
        except ApiError as exc:
            run.ended = True
            await self.send(wire.error(exc.code, exc.message, exc.status, run.id))
        except Exception as exc:  # our bug: this request fails, the socket and node go on
            run.ended = True
            self.node.log("error", "api", f"ws request failed: {type(exc).__name__}: {exc}")
            await self.send(wire.error("internal", "the node could not serve this", 500, run.id))

    async def _end(
        self,
        run: _Run,
        reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        receipt: dict[str, Any] | None,
    ) -> None:
        await self.send(wire.end(run.id, reason, prompt_tokens, completion_tokens, receipt))
        run.ended = True  # only once sent: a cancel during the send still gets its end

    async def _cancel(self, request_id: str) -> None:
        """Stop the request (queue left or generation cancelled, slot freed), then its end."""
        run = self.run
        if run is None or run.id != request_id or run.task is None or run.ended:
            why = f"no request {request_id[:80]!r} is queued or running"
            await self.send(wire.error("unknown_request", why, 404, request_id))
            return
        if run.job is not None and run.job.finished:
            # The run is over and its end (with the receipt the node records as delivered)
            # is on its way: cutting it now would say "cancelled" for a run that is charged.
            await asyncio.wait({run.task})
            return
        run.task.cancel()
        await asyncio.wait({run.task})
        if run.ended:  # it finished before the cancel reached it
            return
        job = run.job
        prompt_tokens = job.stream.stats.prompt_tokens if job is not None else 0
        await self._end(run, "cancelled", prompt_tokens, run.tokens, None)
