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

The trio handler pulls each batch across the bridge (`call_asyncio(runner.next_batch)`);
the engine side (serving/runner.py: auth, model lookup, slots, TokenStream, receipts) runs
on the asyncio loop only and is the same for HTTP and WebSocket clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from fabstir_tui.engine.p2p.frames import FrameError
from fabstir_tui.engine.p2p.messages import (
    JOB_PROTOCOL,
    ErrorCode,
    QueuedFrame,
    TokenFrame,
    error_frame,
    error_frame_for,
    parse_job_request,
)
from fabstir_tui.engine.p2p.receipt_protocol import ReceiptProtocol
from fabstir_tui.engine.p2p.request_auth import ExpectedSigner
from fabstir_tui.engine.p2p.streams import frame_reader, serve_guarded, write_frame
from fabstir_tui.engine.serving.links import RunningJob
from fabstir_tui.engine.serving.runner import BATCH_INTERVAL_S, RequestRunner
from fabstir_tui.engine.serving.turns import Pending

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from fabstir_tui.engine.node import Node
    from fabstir_tui.engine.p2p.bridge import TrioBridge

REQUEST_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0


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
        self.runner = RequestRunner(
            node, batch_interval_s=batch_interval_s, expected_signer=expected_signer
        )
        self._bridge: TrioBridge | None = None

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
        admitted = await bridge.call_asyncio(self.runner.admit, request, peer)
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
                turn = await bridge.call_asyncio(self.runner.next_turn, pending)
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
                    await bridge.call_asyncio(self.runner.abandon, pending)

    async def _stream_tokens(self, stream: Any, bridge: TrioBridge, job: RunningJob) -> None:
        """Pull batches and write them; a failed write or a cancel stops the generation."""
        try:
            while True:
                batch = await bridge.call_asyncio(self.runner.next_batch, job)
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
                await bridge.call_asyncio(self.runner.wind_up, job)

    async def _reply(self, stream: Any, frame: dict[str, Any]) -> None:
        await write_frame(stream, frame, timeout_s=WRITE_TIMEOUT_S)


def job_component(node: Node) -> JobProtocol:
    """The wiring entry: the node's job protocol with default limits."""
    return JobProtocol(node)


def receipt_component(node: Node) -> ReceiptProtocol:
    """The wiring entry for `/fabstir/receipt/1.0.0` (receipts this node's jobs issued)."""
    return ReceiptProtocol(node)
