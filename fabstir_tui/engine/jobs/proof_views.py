"""What the Proofs screen shows per job: the signed receipt's hash, the Merkle root submitted
on-chain, the transactions that carried them and whether re-execution agrees (DESIGN §6).

Reads only: the job book, the archive (receipt, token counts), the chain mirror (payment) and
the transaction journal. `verify_key` re-runs one archived job against its receipt and keeps
the verdict in memory for the view. This is a signed commitment checked by re-execution within
the dispute window, not a zero-knowledge proof.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from fabstir_tui.engine.chain.journal import TxJournal
from fabstir_tui.engine.jobs.archive import ArchivedJob, ArchiveError
from fabstir_tui.engine.jobs.market_sync import market_row
from fabstir_tui.engine.jobs.records import JOB_COLUMNS, JobKey, JobRecord, record_from_row
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.jobs.views import JobCommandError
from fabstir_tui.engine.p2p.request_auth import AuthDomain
from fabstir_tui.engine.proofs.receipt import ReceiptError, parse_receipt, receipt_hash
from fabstir_tui.engine.proofs.verify import VerifySettings, verify_job
from fabstir_tui.engine.proofs.verify_report import VerifyReport

if TYPE_CHECKING:
    from fabstir_tui.engine.jobs.pipeline import JobPipeline
    from fabstir_tui.engine.node import Node

TX_ACTIONS: Final = ("claim", "submit", "release", "unclaim")
VerifyStatus = Literal["verifying", "match", "mismatch", "error"]


@dataclass(frozen=True, slots=True)
class ProofTx:
    """One transaction of a job's life, with what the journal knows of it."""

    action: str  # claim, submit, release, unclaim
    tx_hash: str
    status: str  # the journal's: pending, mined, failed, replaced, dropped; "unknown" if absent
    block: int | None = None


@dataclass(frozen=True, slots=True)
class ProofView:
    """One job's commitments and their fate, at one instant; amounts in the token's base units."""

    key: JobKey
    state: JobState | None  # None: archived here but not (any more) in the job book
    model_id: str  # 0x + the GGUF's SHA-256
    tokens_used: int | None  # what was submitted (prompt + completion, capped)
    prompt_tokens: int | None  # from the archive
    completion_tokens: int | None
    receipt_hash: str | None  # EIP-712 digest of the signed receipt (needs the archive)
    receipt_root: str | None  # the Merkle root submitted on-chain
    output_hash: str | None
    signer: str | None  # the receipt's signer as it names itself (verify checks it)
    txs: tuple[ProofTx, ...] = ()
    chain_status: str = ""  # the marketplace's status of the job ("" when not mirrored)
    paid: int | None = None  # host_amount, once released
    token: str = ""  # the payment token (zero address: ETH)
    settled_tx: str = ""
    archived: bool = False
    finished_at: float | None = None
    verify_status: VerifyStatus | None = None  # this session's last verify of the job
    verify_lines: tuple[str, ...] = ()

    @property
    def job_id(self) -> str:
        return self.key.job_id

    def tx(self, action: str) -> ProofTx | None:
        """The job's transaction for `action`, if one was signed."""
        return next((t for t in self.txs if t.action == action), None)


@dataclass(frozen=True, slots=True)
class _ArchiveFacts:
    """The parts of an archive file the view needs, cached by the file's mtime."""

    mtime_ns: int
    receipt_hash: str | None
    signer: str | None
    prompt_tokens: int
    completion_tokens: int
    finished_at: float
    model_id: str


@dataclass
class _ProofState:
    """Per pipeline: parsed archive files and this session's verify results."""

    archive: dict[Path, _ArchiveFacts] = field(default_factory=dict)
    verdicts: dict[JobKey, tuple[VerifyStatus, tuple[str, ...]]] = field(default_factory=dict)


_STATES: weakref.WeakKeyDictionary[JobPipeline, _ProofState] = weakref.WeakKeyDictionary()


def _state(pipeline: JobPipeline) -> _ProofState:
    state = _STATES.get(pipeline)
    if state is None:
        state = _STATES[pipeline] = _ProofState()
    return state


def _archive_folder(pipeline: JobPipeline, kind: JobKind) -> Path:
    return pipeline.archive.path_for(kind.value, pipeline.chain_id, pipeline.contract, "1").parent


def _facts(job: ArchivedJob, mtime_ns: int) -> _ArchiveFacts:
    digest: str | None = None
    signer: str | None = None
    if job.receipt is not None:
        try:
            signed = parse_receipt(job.receipt)
        except ReceiptError:
            pass  # shown without a hash; verify names the bad field
        else:
            domain = AuthDomain(job.chain_id, job.contract)
            digest = "0x" + receipt_hash(signed.receipt, domain).hex()
            signer = signed.signer
    return _ArchiveFacts(
        mtime_ns=mtime_ns,
        receipt_hash=digest,
        signer=signer,
        prompt_tokens=job.prompt_tokens,
        completion_tokens=job.completion_tokens,
        finished_at=job.finished_at,
        model_id="0x" + job.model_sha256,
    )


def _archived(pipeline: JobPipeline, cache: _ProofState) -> dict[JobKey, _ArchiveFacts]:
    """Every archived job of this chain and marketplace; a file is parsed once per change."""
    found: dict[JobKey, _ArchiveFacts] = {}
    seen: set[Path] = set()
    for kind in JobKind:
        folder = _archive_folder(pipeline, kind)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                mtime_ns = entry.stat().st_mtime_ns
            except OSError:
                continue
            seen.add(path)
            facts = cache.archive.get(path)
            if facts is None or facts.mtime_ns != mtime_ns:
                try:
                    job = pipeline.archive.get(
                        kind.value, pipeline.chain_id, pipeline.contract, name[:-5]
                    )
                except (ArchiveError, ValueError):
                    continue  # a corrupt or foreign file: verify reports it when asked
                if job is None:
                    continue
                facts = cache.archive[path] = _facts(job, mtime_ns)
            key = JobKey(kind, pipeline.chain_id, pipeline.contract, name[:-5])
            found[key] = facts
    for gone in set(cache.archive) - seen:
        del cache.archive[gone]
    return found


def _with_roots(pipeline: JobPipeline) -> dict[JobKey, JobRecord]:
    rows = pipeline.store.query(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE chain_id=? AND contract=? "
        "AND receipt_root IS NOT NULL",
        (pipeline.chain_id, pipeline.contract),
    )
    records = (record_from_row(row) for row in rows)
    return {record.key: record for record in records}


def _txs(journal: TxJournal, hashes: dict[str, str]) -> tuple[ProofTx, ...]:
    out: list[ProofTx] = []
    for action in TX_ACTIONS:
        tx_hash = hashes.get(action)
        if not tx_hash:
            continue
        entry = journal.get(tx_hash)
        status = entry.status if entry is not None else "unknown"
        out.append(ProofTx(action, tx_hash, status, entry.block_number if entry else None))
    return tuple(out)


def proof_views(pipeline: JobPipeline, limit: int = 200) -> list[ProofView]:
    """Jobs with a receipt root or an archive entry, newest first; reads only."""
    cache = _state(pipeline)
    records = _with_roots(pipeline)
    archived = _archived(pipeline, cache)
    for key in archived.keys() - records.keys():
        record = pipeline.book.get(key)
        if record is not None:
            records[key] = record

    def when(key: JobKey) -> float:
        facts, record = archived.get(key), records.get(key)
        if facts is not None:
            return facts.finished_at
        return record.updated_at if record is not None else 0.0

    keys = sorted(records.keys() | archived.keys(), key=when, reverse=True)[:limit]
    journal = TxJournal(pipeline.store)
    views: list[ProofView] = []
    for key in keys:
        record, facts = records.get(key), archived.get(key)
        row = market_row(pipeline.store, key.job_id) if key.kind == JobKind.OPEN else None
        verdict = cache.verdicts.get(key)
        views.append(
            ProofView(
                key=key,
                state=record.state if record is not None else None,
                model_id=(record.model_id if record is not None else None)
                or (facts.model_id if facts is not None else ""),
                tokens_used=record.tokens_used if record is not None else None,
                prompt_tokens=facts.prompt_tokens if facts is not None else None,
                completion_tokens=facts.completion_tokens if facts is not None else None,
                receipt_hash=facts.receipt_hash if facts is not None else None,
                receipt_root=record.receipt_root if record is not None else None,
                output_hash=record.output_hash if record is not None else None,
                signer=facts.signer if facts is not None else None,
                txs=_txs(journal, dict(record.tx_hashes)) if record is not None else (),
                chain_status=row.status if row is not None else "",
                paid=row.host_amount if row is not None and row.status == "released" else None,
                token=row.token if row is not None else "",
                settled_tx=row.settled_tx if row is not None else "",
                archived=facts is not None,
                finished_at=facts.finished_at if facts is not None else None,
                verify_status=verdict[0] if verdict is not None else None,
                verify_lines=verdict[1] if verdict is not None else (),
            )
        )
    return views


def _archived_job(pipeline: JobPipeline, key: JobKey) -> ArchivedJob:
    days = pipeline.node.config.jobs.retention_days
    try:
        job = pipeline.archive.get(key.kind.value, key.chain_id, key.contract, key.job_id)
    except ArchiveError as exc:
        raise JobCommandError(f"cannot verify {key.kind} {key.job_id}: {exc}") from None
    if job is None:
        raise JobCommandError(
            f"cannot verify {key.kind} {key.job_id}: it is not in this node's archive "
            f"(archives are swept after jobs.retention_days = {days:g}, or it never ran here)"
        )
    return job


def _model_path(node: Node, job: ArchivedJob) -> str:
    for model in node.list_models():
        if model.sha256 == job.model_sha256 and model.error is None:
            return model.path
    raise JobCommandError(
        f"cannot verify {job.kind} {job.job_id}: its model (SHA-256 {job.model_sha256[:16]}…) "
        "is not on this node; put the GGUF file in a models folder and rescan"
    )


async def verify_key(node: Node, pipeline: JobPipeline, key: JobKey) -> VerifyReport:
    """Re-run an archived job against its signed receipt with the node's own settings; the
    verdict is kept for the Proofs view. JobCommandError when it cannot start."""
    cache = _state(pipeline)
    running = cache.verdicts.get(key)
    if running is not None and running[0] == "verifying":
        raise JobCommandError(f"{key.kind} {key.job_id} is already being verified")
    job = await asyncio.to_thread(_archived_job, pipeline, key)
    path = _model_path(node, job)
    settings = VerifySettings(
        domain=AuthDomain(job.chain_id, job.contract),
        inference=node.config.inference,
        top_k=node.config.jobs.verify_top_k,
        expected_signer=node.chain.address or None,
        model_file_sha256=job.model_sha256,
    )
    before = cache.verdicts.get(key)
    cache.verdicts[key] = ("verifying", ())
    try:
        report = await verify_job(job, path, settings)
    except BaseException:
        if before is None:
            cache.verdicts.pop(key, None)
        else:
            cache.verdicts[key] = before
        raise
    cache.verdicts[key] = (report.verdict, tuple(report.lines()))
    return report
