"""The engine half of serving one request, shared by every transport (the P2P job protocol,
the HTTP API, WebSocket sessions): check the signed request, find the loaded model, wait for
a slot, pull the tokens in batches, issue the receipt, wind up. One class, so a paid request
is judged, receipted and submitted the same way whichever way it arrived.

Everything here runs on the node's asyncio loop; transports only move frames."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.inference.registry import model_key
from fabstir_tui.engine.inference.stream import GenerationRequest, InferenceError
from fabstir_tui.engine.jobs.runs import Replay
from fabstir_tui.engine.p2p.messages import (
    MAX_PIECES,
    EndFrame,
    ErrorCode,
    JobRequest,
    error_frame,
)
from fabstir_tui.engine.p2p.receipt_protocol import FinishedJob, book_for, issue_receipt
from fabstir_tui.engine.p2p.request_auth import (
    AuthDomain,
    AuthRefused,
    ExpectedSigner,
    NonceBook,
    RequestVerifier,
)
from fabstir_tui.engine.serving import links, turns
from fabstir_tui.engine.serving.links import Batch, RunningJob
from fabstir_tui.engine.serving.turns import Pending

if TYPE_CHECKING:
    from fabstir_tui.engine.events import LoadedModel
    from fabstir_tui.engine.node import Node

BATCH_INTERVAL_S = 0.05
DEADLINE_PASSED = "deadline_passed"  # the pipeline's refusal code, also for a run cut late
NONCE_SWEEP_INTERVAL_S = 3600.0
_FINISH = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _finish(reason: str) -> str:
    """The engine's finish reason when it is a plain word (it goes into a wire frame)."""
    return reason if _FINISH.fullmatch(reason) else "stop"


class RequestRunner:
    """Admission, slots, batches, receipts and clean-up for requests from any client."""

    def __init__(
        self,
        node: Node,
        *,
        batch_interval_s: float = BATCH_INTERVAL_S,
        expected_signer: ExpectedSigner | None = None,
    ) -> None:
        self.node = node
        self.batch_interval_s = batch_interval_s
        self.expected_signer = expected_signer
        self.receipts = book_for(node)
        self._verifier: RequestVerifier | None = None
        self._last_sweep = -float("inf")
        self._concluding: set[asyncio.Future[EndFrame]] = set()  # ends outliving their client

    # --- admission -------------------------------------------------------------------------

    async def admit(
        self, request: JobRequest, peer: str
    ) -> Pending | list[dict[str, Any]] | dict[str, Any]:
        """A request that may wait for a slot, a delivered job's frames sent again, or an
        error frame; never raises (our bug becomes `internal`, logged)."""
        try:
            return await self._admit(request, peer)
        except Exception as exc:
            self.node.log("error", "p2p", f"job request from {peer} failed: {exc}")
            return error_frame(ErrorCode.INTERNAL, "the node could not take the request")

    async def _admit(
        self, request: JobRequest, peer: str
    ) -> Pending | list[dict[str, Any]] | dict[str, Any]:
        ticket = links.pipeline_ticket(self.node, request, peer)
        if isinstance(ticket, dict):
            return ticket
        if request.auth is not None:
            jobs = self.node.jobs
            expected = jobs.runs.expected_signer(ticket) if ticket is not None and jobs else None
            try:
                signer = await asyncio.to_thread(self.check_auth, request, expected)
            except AuthRefused as exc:
                return error_frame(ErrorCode.UNAUTHORIZED, f"auth refused ({exc.reason}): {exc}")
            self.node.log("debug", "p2p", f"job request from {peer} signed by {signer}")
        if isinstance(ticket, Replay):
            self.node.log("info", "jobs", f"job {ticket.key.job_id}: its answer sent again")
            return links.replay_frames(ticket)
        located = self.locate(request.model_id)
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
            seed=self.seed_for(request),
        )
        jobs = self.node.jobs
        price = jobs.runs.price_of(ticket) if ticket is not None and jobs is not None else 0
        return Pending(request, path, name, sha256, model, generation, ticket, price)

    def seed_for(self, request: JobRequest) -> int:
        """The seed the job really runs with, chosen here so its receipt can name it."""
        if request.seed is not None and request.seed >= 0:
            return request.seed
        configured = self.node.config.inference.seed
        return configured if configured >= 0 else secrets.randbits(31)

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

    def check_auth(self, request: JobRequest, expected: ExpectedSigner | None = None) -> str:
        """Worker thread: the signer of a request's auth (SQLite nonce write), sweeping
        expired nonces now and then; AuthRefused says why not."""
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

    def locate(self, model_id: str) -> tuple[str, str, str, LoadedModel] | dict[str, Any]:
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

    # --- slots -----------------------------------------------------------------------------

    async def next_turn(self, pending: Pending) -> int | RunningJob | dict[str, Any]:
        """The request's queue position while it waits, its started run, or an error frame."""
        return await turns.next_turn(self.node, pending)

    async def abandon(self, pending: Pending) -> None:
        """The client left before its run streamed: leave the queue or stop the run."""
        await turns.abandon(self.node, pending, self.wind_up)

    # --- the run ---------------------------------------------------------------------------

    async def next_batch(self, job: RunningJob) -> Batch:
        """Wait for the next piece, then gather more until the batch interval since that first
        piece has passed or the stream ended. The first token goes out alone, at once: waiting
        a batch interval for it added 50 ms to every time to first token.

        A piece is one token's text, except that a token ending mid-character shows no text
        until the next one completes it: the engine's final count tops up the last batch, so
        the batches' token total always equals the end's completion_tokens.
        """
        batch = Batch()
        try:
            batch.pieces.append(await anext(job.stream))
            first = job.counted == 0
            deadline = time.monotonic() + (0.0 if first else self.batch_interval_s)
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
            links.progress(self.node, job, batch)
            if links.past_deadline(self.node, job):
                await self._stop_late(job, batch)
            return batch
        except StopAsyncIteration:
            job.finished = True
            job.output.extend(batch.pieces)
            stats = job.stream.stats
            batch.tokens = max(len(batch.pieces), stats.completion_tokens - job.counted)
            job.counted += batch.tokens
            batch.end = EndFrame(
                prompt_tokens=stats.prompt_tokens,
                completion_tokens=stats.completion_tokens,
                finish_reason=_finish(stats.finish_reason),
            )
            # A client that leaves now must not split the receipt from the pipeline's record
            # (the job would stay running, refusing every later request, never submitted).
            concluding = asyncio.ensure_future(self._conclude(job, batch.end))
            self._concluding.add(concluding)
            concluding.add_done_callback(self._concluding.discard)
            batch.end = await asyncio.shield(concluding)
        except InferenceError as exc:
            job.finished = True
            batch.tokens = len(batch.pieces)
            batch.error = error_frame(ErrorCode.INTERNAL, f"{job.model_name} failed: {exc}")
            links.cut(self.node, job, f"{job.model_name} failed: {exc}")
        return batch

    async def _stop_late(self, job: RunningJob, batch: Batch) -> None:
        """The deadline came mid-run: stop generating (a submit now would revert), tell the
        client after the tokens it already has, and leave the job claimed to expire."""
        job.finished = True
        name = job.ticket.key.job_id if job.ticket is not None else "?"
        why = f"job {name}'s deadline passed during the run; it was stopped unsubmitted"
        batch.error = error_frame(DEADLINE_PASSED, why)
        links.cut(self.node, job, "its deadline passed during the run")
        try:
            await job.stream.cancel()
        except Exception as exc:  # the worker may be gone already
            self.node.log("warning", "jobs", f"could not stop a late run: {exc}")

    async def _conclude(self, job: RunningJob, end: EndFrame) -> EndFrame:
        """The end with its receipt, recorded as finished for the pipeline."""
        end = replace(end, receipt=await self._receipt_for(job, end))
        links.finished(self.node, job, end)
        return end

    async def _receipt_for(self, job: RunningJob, end: EndFrame) -> dict[str, Any] | None:
        """The signed receipt's wire form, or None (key locked, no chain, or a failure that
        is logged: the client still gets its end)."""
        finished = FinishedJob(
            job_id=job.request.job_id,
            session_id=job.request.session_id,
            model_sha256=job.model_sha256,
            model=job.model,
            generation=job.generation,
            output="".join(job.output),
            prompt_tokens=end.prompt_tokens,
            completion_tokens=end.completion_tokens,
            prev_receipt_hash=links.prev_receipt(self.node, job),
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

    async def wind_up(self, job: RunningJob) -> None:
        """The client's stream is over: stop an unfinished generation, hand the slot on."""
        try:
            if not job.finished:
                await self._cancel(job)
        finally:
            if job.lease is not None:
                job.lease.release()

    async def _cancel(self, job: RunningJob) -> None:
        job.finished = True
        links.cut(self.node, job, "the client went away")
        try:
            await job.stream.cancel()
        except Exception as exc:  # the worker may be gone already
            self.node.log("warning", "p2p", f"could not cancel an abandoned job: {exc}")
        else:
            self.node.log("info", "p2p", "a job client went away: its generation was cancelled")
