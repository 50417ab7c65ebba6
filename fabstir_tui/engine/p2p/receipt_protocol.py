"""Signed job receipts (DESIGN §6): issued at a job's end, kept on disk, served on
`/fabstir/receipt/1.0.0`.

A receipt is signed only with the node's real, unlocked chain key; with the key locked or no
chain side there is no receipt at all (and a debug line says why), never a placeholder.
Receipts are public commitments, so the receipt protocol answers anyone:
``{v:1, t:"receipt_request", hash}`` → ``{v:1, t:"receipt", receipt}`` or an error frame
(``not_found``, ``malformed``, ``timeout``).

Storage: the receipt's canonical JSON goes in the content-addressed `BlobStore` under
``<data_dir>/blobs``; a one-line index file ``<data_dir>/blobs/by-receipt/<receipt hash>``
names that blob, written atomically so the index survives restarts.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from fabstir_tui.engine.durable import write_atomically
from fabstir_tui.engine.p2p.frames import FrameError, MalformedFrame
from fabstir_tui.engine.p2p.messages import VERSION, ErrorCode, error_frame, error_frame_for
from fabstir_tui.engine.p2p.request_auth import AuthDomain
from fabstir_tui.engine.p2p.streams import frame_reader, serve_guarded, write_frame
from fabstir_tui.engine.proofs import (
    ZERO_HASH,
    BlobError,
    BlobStore,
    ReceiptError,
    SignedReceipt,
    build_receipt,
    parse_receipt,
    receipt_hash,
    sign_receipt,
)

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from fabstir_tui.engine.events import LoadedModel
    from fabstir_tui.engine.inference.stream import GenerationRequest
    from fabstir_tui.engine.node import Node
    from fabstir_tui.engine.p2p.bridge import TrioBridge

_log = logging.getLogger(__name__)

RECEIPT_PROTOCOL: Final = "/fabstir/receipt/1.0.0"
NOT_FOUND: Final = "not_found"
REQUEST_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
_HASH = re.compile(r"0x[0-9a-f]{64}")
_UINT = re.compile(r"[1-9][0-9]{0,77}")


class ReceiptBook:
    """Receipts on disk: blobs by content, plus a durable receipt-hash → blob index."""

    def __init__(self, root: Path) -> None:
        self.blobs = BlobStore(root)
        self.index = root / "by-receipt"

    def save(self, signed: SignedReceipt, domain: AuthDomain) -> str:
        """Store the receipt and index it; returns its hash (0x-hex)."""
        digest = self.blobs.put(signed.to_json())
        key = receipt_hash(signed.receipt, domain).hex()
        write_atomically(self.index / key, digest.encode("ascii"))
        return "0x" + key

    def load(self, hash_hex: str) -> SignedReceipt | None:
        """The receipt with this hash (0x + 64 lower-case hex), or None when unknown."""
        if not _HASH.fullmatch(hash_hex):
            raise ValueError("a receipt hash is 0x + 64 lower-case hex digits")
        try:
            digest = (self.index / hash_hex[2:]).read_text("ascii").strip()
        except FileNotFoundError:
            return None
        return parse_receipt(self.blobs.get(digest))


def book_for(node: Node) -> ReceiptBook:
    """The node's receipt book under <data_dir>/blobs."""
    return ReceiptBook(Path(node.config.paths.data_dir) / "blobs")


@dataclass(frozen=True, slots=True)
class FinishedJob:
    """What a receipt commits to: the request's ids, the model, the settings and the output."""

    job_id: str | None
    session_id: str | None
    model_sha256: str
    model: LoadedModel
    generation: GenerationRequest
    output: str
    prompt_tokens: int
    completion_tokens: int
    prev_receipt_hash: str = ZERO_HASH  # a session's previous receipt: receipts form a chain


def runtime_settings(node: Node, job: FinishedJob) -> dict[str, Any]:
    """The runtime and sampler settings this job really ran with (what re-execution needs)."""
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    offloaded = job.model.gpu_offload and job.model.n_gpu_layers != 0
    settings: dict[str, Any] = {
        "llama_cpp_version": version,
        "backend": "gpu" if offloaded else "cpu",
        "n_gpu_layers": job.model.n_gpu_layers,
        "threads": job.model.n_threads,
        "batch_size": node.config.inference.batch_size,
        "n_ctx": job.model.n_ctx,
        "flash_attn": node.config.inference.flash_attention,
        **job.generation.sampler(),
    }
    slots = node.config.inference.slots
    if slots > 1:
        # Batched decoding's numbers are not an unbatched re-run's: a different runtime hash
        # sends `verify` to the top-k check. Absent at 1, so unbatched hashes never change.
        settings["parallel"] = slots
    return settings


def _uint_id(value: str | None) -> int:
    return int(value) if value is not None and _UINT.fullmatch(value) else 0


def issue_receipt(node: Node, book: ReceiptBook, job: FinishedJob) -> dict[str, Any] | str:
    """Worker thread: sign and store the job's receipt; its wire form, or why there is none
    (the key is locked, there is no chain side, the ids are not uint256) for the log."""
    try:
        account = node.chain.signing_account()
    except RuntimeError:  # the chain side has not started
        account = None
    if account is None:
        return "no receipt for this job: the node key is locked or no chain is configured"
    job_id, session_id = _uint_id(job.job_id), _uint_id(job.session_id)
    if (job_id == 0) == (session_id == 0):
        ids = job.job_id or job.session_id or ""
        return f"no receipt for this job: its id {ids[:80]!r} is not a non-zero uint256"
    domain = AuthDomain.from_config(node.config)
    receipt = build_receipt(
        model_sha256=job.model_sha256,
        runtime=runtime_settings(node, job),
        prompt=job.generation.prompt or "",
        output=job.output,
        prompt_tokens=job.prompt_tokens,
        completion_tokens=job.completion_tokens,
        job_id=job_id,
        session_id=session_id,
        prev_receipt_hash=job.prev_receipt_hash,
    )
    signed = sign_receipt(account.key, domain, receipt)
    book.save(signed, domain)
    return signed.to_wire()


def parse_receipt_request(frame: Any) -> str:
    """The requested receipt hash, or MalformedFrame naming the bad field."""
    if not isinstance(frame, dict):
        raise MalformedFrame("receipt_request frame must be an object")
    v = frame.get("v")
    if isinstance(v, bool) or v != VERSION:
        raise MalformedFrame(f"field 'v': unsupported version {v!r} (want {VERSION})")
    if frame.get("t") != "receipt_request":
        raise MalformedFrame(f"field 't': expected 'receipt_request', got {frame.get('t')!r}")
    value = frame.get("hash")
    if not isinstance(value, str) or not _HASH.fullmatch(value.lower()):
        raise MalformedFrame("field 'hash': expected 0x + 64 hex digits")
    return value.lower()


class ReceiptProtocol:
    """Serves stored receipts by hash to any peer (they are public commitments)."""

    name = "receipt"

    def __init__(self, node: Node, *, request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.node = node
        self.book = book_for(node)
        self.request_timeout_s = request_timeout_s

    async def attach(self, host: IHost, bridge: TrioBridge, nursery: trio.Nursery) -> None:
        """Trio side: register the stream handler."""
        from libp2p.custom_types import TProtocol

        host.set_stream_handler(TProtocol(RECEIPT_PROTOCOL), self._handle)

    async def _handle(self, stream: Any) -> None:
        await serve_guarded(stream, self._serve, RECEIPT_PROTOCOL)

    async def _serve(self, stream: Any) -> None:
        reader = frame_reader(stream, read_timeout_s=self.request_timeout_s)
        try:
            frame = await reader.read_frame()
            if frame is None:
                return
            wanted = parse_receipt_request(frame)
        except FrameError as exc:
            await write_frame(stream, error_frame_for(exc), timeout_s=WRITE_TIMEOUT_S)
            return
        except trio.TooSlowError:
            reply = error_frame(ErrorCode.TIMEOUT, "no complete request in time")
            await write_frame(stream, reply, timeout_s=WRITE_TIMEOUT_S)
            return
        await write_frame(stream, await self._answer(wanted), timeout_s=WRITE_TIMEOUT_S)

    async def _answer(self, wanted: str) -> dict[str, Any]:
        try:
            signed = await trio.to_thread.run_sync(self.book.load, wanted)
        except (BlobError, ReceiptError, OSError, ValueError) as exc:
            _log.warning("stored receipt %s is unreadable: %s", wanted, exc)
            return error_frame(ErrorCode.INTERNAL, "the stored receipt could not be read")
        if signed is None:
            return error_frame(NOT_FOUND, f"this node holds no receipt {wanted}")
        return {"v": VERSION, "t": "receipt", "receipt": signed.to_wire()}
