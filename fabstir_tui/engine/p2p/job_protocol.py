"""`/fabstir/job/1.0.0` (DESIGN §5, §11.6): one stream per request, tokens streamed in batches.

The host reads one ``job_request`` frame. A request for a job in the pipeline's book is the
pipeline's to judge (engine/jobs/runs.py): the job must be claimed by us, the model, deadline
and prompt hash must match what was posted on-chain, and the ``auth`` must be signed by the
job's poster; its end is submitted on-chain. Any other request is served only to peers on
``p2p.job_allowlist`` (the operator's own tests; empty by default, so no free inference by
accident). The model id (the GGUF's SHA-256) maps to a loaded model and the generation
streams: a ``tokens`` frame at most every 50 ms (one per batch, not one per token), then
``end`` with the usage and, when the node key is unlocked, the signed receipt
(receipt_protocol.py). A peer that goes away cancels its generation, freeing the slot.

The trio handler pulls each batch across the bridge (`call_asyncio(next_batch)`); the
engine side (model lookup, auth, TokenStream) runs on the asyncio loop only.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from fabstir_tui.engine.inference.registry import model_key
from fabstir_tui.engine.inference.stream import GenerationRequest, InferenceError
from fabstir_tui.engine.jobs.runs import Replay
from fabstir_tui.engine.p2p import job_link, job_turns
from fabstir_tui.engine.p2p.frames import FrameError
from fabstir_tui.engine.p2p.job_link import Batch, RunningJob
from fabstir_tui.engine.p2p.job_turns import Pending
from fabstir_tui.engine.p2p.messages import (
    JOB_PROTOCOL,
    MAX_PIECES,
    EndFrame,
    ErrorCode,
    JobRequest,
    QueuedFrame,
    TokenFrame,
    error_frame,
    error_frame_for,
    parse_job_request,
)
from fabstir_tui.engine.p2p.receipt_protocol import (
    FinishedJob,
    ReceiptProtocol,
    book_for,
    issue_receipt,
)
from fabstir_tui.engine.p2p.request_auth import (
    AuthDomain,
    AuthRefused,
    ExpectedSigner,
    NonceBook,
    RequestVerifier,
)
from fabstir_tui.engine.p2p.streams import frame_reader, serve_guarded, write_frame

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from fabstir_tui.engine.events import LoadedModel
    from fabstir_tui.engine.node import Node
    from fabstir_tui.engine.p2p.bridge import TrioBridge

_log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
BATCH_INTERVAL_S = 0.05
NONCE_SWEEP_INTERVAL_S = 3600.0
_FINISH = re.compile(r"[a-z][a-z0-9_]{0,31}")


class JobProtocol:
    """The job protocol's handler; built from the Node in wiring.py."""

    name = "job"

    def __init__(
        self,
        node: Node,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        batch_interval_s: float = BATCH_INTERVAL_S,
        expected_signer: ExpectedSigner | None = None,
    ) -> None:
        self.node = node
        self.request_timeout_s = request_timeout_s
        self.batch_interval_s = batch_interval_s
        self.expected_signer = expected_signer
        self._bridge: TrioBridge | None = None
        self._verifier: RequestVerifier | None = None
        self._last_sweep = -float("inf")
        self.receipts = book_for(node)

    async def attach(self, host: IHost, bridge: TrioBridge, nursery: trio.Nursery) -> None:
        """Trio side: register the stream handler."""
        from libp2p.custom_types import TProtocol

        self._bridge = bridge
        host.set_stream_handler(TProtocol(JOB_PROTOCOL), self._handle)

    # --- trio side -------------------------------------------------------------------------

    async def _handle(self, stream: Any) -> None:
        """One request on one stream; never raises (cancellation passes through)."""
        await serve_guarded(stream, self._serve, JOB_PROTOCOL)

    async def _serve(self, stream: Any) -> None:
        bridge = self._bridge
        assert bridge is not None
        reader = frame_reader(stream, read_timeout_s=self.request_timeout_s)
        try:
            frame = await reader.read_frame()
            if frame is None:
                return  # the peer closed without asking
            request = parse_job_request(frame)
        except FrameError as exc:
            await self._reply(stream, error_frame_for(exc))
            return
        except trio.TooSlowError:
            limit = f"{self.request_timeout_s:g}"
            await self._reply(
                stream, error_frame(ErrorCode.TIMEOUT, f"no complete request within {limit} s")
            )
            return
        peer = str(stream.muxed_conn.peer_id)
        admitted = await bridge.call_asyncio(self._admit, request, peer)
        if isinstance(admitted, dict):
            await self._reply(stream, admitted)
            return
        if isinstance(admitted, list):  # a delivered answer, sent again
            for frame in admitted:
                await self._reply(stream, frame)
            return
        job = await self._wait_turn(stream, bridge, admitted)
        if job is not None:
            await self._stream_tokens(stream, bridge, job)

    async def _wait_turn(
        self, stream: Any, bridge: TrioBridge, pending: Pending
    ) -> RunningJob | None:
        """Queued frames while the request waits for a slot; the run once it has one."""
        job: RunningJob | None = None
        try:
            while True:
                turn = await bridge.call_asyncio(job_turns.next_turn, self.node, pending)
                if isinstance(turn, RunningJob):
                    job = turn
                    return job
                if isinstance(turn, dict):
                    await self._reply(stream, turn)
                    return None
                frame = QueuedFrame(position=turn).to_frame()
                await write_frame(stream, frame, timeout_s=WRITE_TIMEOUT_S)
        finally:
            if job is None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await bridge.call_asyncio(job_turns.abandon, self.node, pending, self._wind_up)

    async def _stream_tokens(self, stream: Any, bridge: TrioBridge, job: RunningJob) -> None:
        """Pull batches and write them; a failed write or a cancel stops the generation."""
        try:
            while True:
                batch = await bridge.call_asyncio(self._next_batch, job)
                if batch.pieces or batch.tokens:
                    frame = TokenFrame(pieces=tuple(batch.pieces), tokens=batch.tokens)
                    await write_frame(stream, frame.to_frame(), timeout_s=WRITE_TIMEOUT_S)
                if batch.end is not None:
                    await write_frame(stream, batch.end.to_frame(), timeout_s=WRITE_TIMEOUT_S)
                    return
                if batch.error is not None:
                    await write_frame(stream, batch.error, timeout_s=WRITE_TIMEOUT_S)
                    return
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await bridge.call_asyncio(self._wind_up, job)

    async def _reply(self, stream: Any, frame: dict[str, Any]) -> None:
        await write_frame(stream, frame, timeout_s=WRITE_TIMEOUT_S)

    # --- asyncio side ----------------------------------------------------------------------

    def _verifier_for(self) -> RequestVerifier:
        if self._verifier is None:
            store = self.node.store
            if store is None:
                raise RuntimeError("the node store is not open")
            self._verifier = RequestVerifier(
                AuthDomain.from_config(self.node.config),
                NonceBook(store),
                expected_signer=self.expected_signer,
            )
        return self._verifier

    def host_address(self) -> str:
        """The node key's address (a signed request must name it): from the chain side, else
        read from the keystore without unlocking it; "" when the node has no key."""
        status = self.node.chain_status()
        if status is not None and status.address:
            return status.address
        from fabstir_tui.engine.chain.wallet import keystore_path, read_address

        path = keystore_path(self.node.config)
        try:
            return read_address(path) if path.is_file() else ""
        except Exception:  # an unreadable keystore: no address to vouch for
            return ""

    async def _admit(
        self, request: JobRequest, peer: str
    ) -> Pending | list[dict[str, Any]] | dict[str, Any]:
        """Auth, model lookup and generation start; an error frame when refused."""
        try:
            return await self._try_admit(request, peer)
        except Exception as exc:  # our bug: the peer gets a short answer, the log the rest
            self.node.log("error", "p2p", f"job request from {peer} failed: {exc}")
            return error_frame(ErrorCode.INTERNAL, "the node could not take the request")

    async def _try_admit(
        self, request: JobRequest, peer: str
    ) -> Pending | list[dict[str, Any]] | dict[str, Any]:
        ticket = job_link.pipeline_ticket(self.node, request, peer)
        if isinstance(ticket, dict):
            return ticket
        if request.auth is not None:
            jobs = self.node.jobs
            expected = jobs.runs.expected_signer(ticket) if ticket is not None and jobs else None
            try:
                signer = await asyncio.to_thread(self._check_auth, request, expected)
            except AuthRefused as exc:
                return error_frame(ErrorCode.UNAUTHORIZED, f"auth refused ({exc.reason}): {exc}")
            self.node.log("debug", "p2p", f"job request from {peer} signed by {signer}")
        if isinstance(ticket, Replay):
            self.node.log("info", "jobs", f"job {ticket.key.job_id}: its answer sent again")
            return job_link.replay_frames(ticket)
        located = self._locate(request.model_id)
        if isinstance(located, dict):
            return located
        path, name, sha256, model = located
        defaults = GenerationRequest(prompt="")
        generation = GenerationRequest(
            prompt=request.prompt,
            max_tokens=request.max_tokens if ticket is None else ticket.max_tokens,
            temperature=defaults.temperature
            if request.temperature is None
            else request.temperature,
            seed=self._seed_for(request),
        )
        jobs = self.node.jobs
        price = jobs.runs.price_of(ticket) if ticket is not None and jobs is not None else 0
        return Pending(request, path, name, sha256, model, generation, ticket, price)

    def _seed_for(self, request: JobRequest) -> int:
        """The seed the job really runs with, chosen here so its receipt can name it."""
        if request.seed is not None and request.seed >= 0:
            return request.seed
        configured = self.node.config.inference.seed
        return configured if configured >= 0 else secrets.randbits(31)

    def _check_auth(self, request: JobRequest, expected: ExpectedSigner | None = None) -> str:
        """Worker thread: verify (SQLite nonce write), sweeping expired nonces now and then."""
        verifier = self._verifier_for()
        now = time.monotonic()
        if now - self._last_sweep >= NONCE_SWEEP_INTERVAL_S:
            self._last_sweep = now
            verifier.nonces.sweep()
        return verifier.verify(
            request.auth,
            host_address=self.host_address(),
            prompt=request.prompt,
            job_id=request.job_id,
            session_id=request.session_id,
            expected_signer=expected,
        )

    def _locate(self, model_id: str) -> tuple[str, str, str, LoadedModel] | dict[str, Any]:
        """(path, name, sha256, loaded) of the loaded model with this SHA-256, or the refusal
        frame."""
        wanted = model_id.lower().removeprefix("0x")
        on_disk = [m for m in self.node.list_models() if m.sha256 == wanted and m.error is None]
        if not on_disk:
            return error_frame(
                ErrorCode.MODEL_NOT_SERVED, f"this node does not serve model {model_id[:80]}"
            )
        loaded = {model_key(m.path): m for m in self.node.loaded_models()}
        for model in on_disk:
            running = loaded.get(model_key(model.path))
            if running is not None:
                return model.path, model.name, wanted, running
        return error_frame(
            ErrorCode.MODEL_NOT_SERVED,
            f"model {on_disk[0].name} is on this node's disk but not loaded",
        )

    async def _next_batch(self, job: RunningJob) -> Batch:
        """Wait for the next piece, then gather more until the batch interval since that first
        piece has passed or the stream ended.

        A piece is one token's text, except that a token ending mid-character shows no text
        until the next one completes it: the engine's final count tops up the last batch, so
        the frames' token total always equals the end frame's completion_tokens.
        """
        batch = Batch()
        try:
            batch.pieces.append(await anext(job.stream))
            deadline = time.monotonic() + self.batch_interval_s
            while len(batch.pieces) < MAX_PIECES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        batch.pieces.append(await anext(job.stream))
                except TimeoutError:
                    break
            batch.tokens = len(batch.pieces)
            job.counted += batch.tokens
            job.output.extend(batch.pieces)
            job_link.progress(self.node, job, batch)
            return batch
        except StopAsyncIteration:
            job.finished = True
            job.output.extend(batch.pieces)
            stats = job.stream.stats
            batch.tokens = max(len(batch.pieces), stats.completion_tokens - job.counted)
            job.counted += batch.tokens
            finish = stats.finish_reason if _FINISH.fullmatch(stats.finish_reason) else "stop"
            batch.end = EndFrame(
                prompt_tokens=stats.prompt_tokens,
                completion_tokens=stats.completion_tokens,
                finish_reason=finish,
            )
            batch.end = replace(batch.end, receipt=await self._receipt_for(job, batch.end))
            job_link.finished(self.node, job, batch.end)
        except InferenceError as exc:
            job.finished = True
            batch.tokens = len(batch.pieces)
            batch.error = error_frame(ErrorCode.INTERNAL, f"{job.model_name} failed: {exc}")
            job_link.cut(self.node, job, f"{job.model_name} failed: {exc}")
        return batch

    async def _receipt_for(self, job: RunningJob, end: EndFrame) -> dict[str, Any] | None:
        """The signed receipt's wire form, or None (key locked, no chain, or a failure that
        is logged: the client still gets its end frame)."""
        finished = FinishedJob(
            job_id=job.request.job_id,
            session_id=job.request.session_id,
            model_sha256=job.model_sha256,
            model=job.model,
            generation=job.generation,
            output="".join(job.output),
            prompt_tokens=end.prompt_tokens,
            completion_tokens=end.completion_tokens,
            prev_receipt_hash=job_link.prev_receipt(self.node, job),
        )
        try:
            issued = await asyncio.to_thread(issue_receipt, self.node, self.receipts, finished)
        except Exception as exc:  # a full disk or our bug: no receipt rather than no answer
            self.node.log("error", "p2p", f"could not issue a job receipt: {exc}")
            return None
        if isinstance(issued, str):
            self.node.log("debug", "p2p", issued)
            return None
        return issued

    async def _wind_up(self, job: RunningJob) -> None:
        """The stream is over: stop an unfinished generation, hand the slot on."""
        try:
            if not job.finished:
                await self._cancel(job)
        finally:
            if job.lease is not None:
                job.lease.release()

    async def _cancel(self, job: RunningJob) -> None:
        job.finished = True
        job_link.cut(self.node, job, "the client went away")
        try:
            await job.stream.cancel()
        except Exception as exc:  # the worker may be gone already
            self.node.log("warning", "p2p", f"could not cancel an abandoned job: {exc}")
        else:
            self.node.log("info", "p2p", "a job client went away: its generation was cancelled")


def job_component(node: Node) -> JobProtocol:
    """The wiring entry: the node's job protocol with default limits."""
    return JobProtocol(node)


def receipt_component(node: Node) -> ReceiptProtocol:
    """The wiring entry for `/fabstir/receipt/1.0.0` (receipts this node's jobs issued)."""
    return ReceiptProtocol(node)
