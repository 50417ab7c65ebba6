"""`fabstir-tui verify JOB`: re-execute a finished job and check its signed receipt.

Exit 0 = match, 1 = mismatch (evidence against the host), 2 = could not verify. Progress on
stderr; the report on stdout (or one JSON document with --json). Runs beside a running node:
reads the archive and the model-hash cache (SQLite WAL) and never takes the data-dir lock.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from fabstir_tui.commands.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, emit_json, fail, say
from fabstir_tui.config import Config, ConfigError

EXIT_MISMATCH = EXIT_FAILED
EXIT_UNVERIFIED = EXIT_USAGE
_EXITS = {"match": EXIT_OK, "mismatch": EXIT_MISMATCH, "error": EXIT_UNVERIFIED}


class Unverifiable(Exception):
    """Verification cannot start: the sentence says what, why and what to do."""


def _progress(message: str) -> None:
    say(f"verify: {message}…")


def _archived(config: Config, job_id: str, kind: str) -> Any:
    from fabstir_tui.engine.jobs.archive import ArchiveError, archive_for

    archive = archive_for(config.paths.data_dir)
    contract = config.chain.job_marketplace.lower()
    try:
        if contract:
            job = archive.get(kind, config.chain.chain_id, contract, job_id)
            if job is not None:
                return job
            elsewhere = [j for j in archive.find(job_id) if j.kind == kind]
            hint = "".join(
                f"; one is archived for chain {j.chain_id} contract {j.contract or '(none)'}"
                for j in elsewhere
            )
            raise Unverifiable(
                f"no archived {kind} {job_id} for chain {config.chain.chain_id} and "
                f"JobMarketplace {contract} in {archive.root}{hint} (archives are kept "
                "jobs.retention_days; a client without the host's disk uses --receipt)"
            )
        found = [j for j in archive.find(job_id) if j.kind == kind]
    except ArchiveError as exc:
        raise Unverifiable(f"{exc}; move the file aside or restore it") from None
    if not found:
        raise Unverifiable(
            f"no archived {kind} {job_id} in {archive.root} (use --session for a session id; "
            "archives are kept jobs.retention_days)"
        )
    if len(found) > 1:
        where = ", ".join(f"chain {j.chain_id} contract {j.contract or '(none)'}" for j in found)
        raise Unverifiable(
            f"{kind} {job_id} is archived more than once ({where}); set chain.chain_id and "
            "chain.job_marketplace in the config to pick one"
        )
    return found[0]


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise Unverifiable(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise Unverifiable(f"the {what} file {path} is not UTF-8 text") from None


def _from_files(
    config: Config, receipt_file: Path, prompt_file: Path, output_file: Path, gen_file: Path | None
) -> Any:
    """An ArchivedJob built from what a client holds: the receipt, prompt and output."""
    from fabstir_tui.engine.jobs.archive import ArchivedJob
    from fabstir_tui.engine.proofs import ReceiptError, parse_receipt

    try:
        document = json.loads(_read_text(receipt_file, "receipt"))
    except ValueError as exc:
        raise Unverifiable(f"the receipt file {receipt_file} is not JSON: {exc}") from None
    if isinstance(document, dict) and isinstance(document.get("receipt"), dict):
        document = document["receipt"]  # a whole end frame
    try:
        receipt = parse_receipt(document).receipt
    except ReceiptError as exc:
        raise Unverifiable(f"the receipt in {receipt_file} is malformed: {exc}") from None
    generation: dict[str, Any] = {}
    if gen_file is not None:
        try:
            generation = json.loads(_read_text(gen_file, "generation"))
        except ValueError as exc:
            raise Unverifiable(f"the generation file {gen_file} is not JSON: {exc}") from None
        if not isinstance(generation, dict):
            raise Unverifiable(f"the generation file {gen_file} must hold a JSON object")
    kind = "job" if receipt.job_id else "session"
    return ArchivedJob(
        kind=kind,
        chain_id=config.chain.chain_id,
        contract=config.chain.job_marketplace.lower(),
        job_id=str(receipt.job_id or receipt.session_id),
        prompt=_read_text(prompt_file, "prompt"),
        output=_read_text(output_file, "output"),
        model_sha256=receipt.model_hash[2:],
        receipt=document,
        generation=generation,
        prompt_tokens=receipt.prompt_tokens,
        completion_tokens=receipt.completion_tokens,
        finished_at=time.time(),
    )


async def _find_model(config: Config, sha256: str, model: Path | None) -> tuple[str, str]:
    """(path, its SHA-256): --model PATH (hash cached by the registry), else the configured
    folders searched by hash."""
    from fabstir_tui.engine.events import EventBus
    from fabstir_tui.engine.inference.gguf_errors import GgufError
    from fabstir_tui.engine.inference.registry import ModelRegistry, model_key
    from fabstir_tui.engine.store import Store, StoreError

    try:
        store = Store(config.paths.data_dir / "node.db")
    except StoreError as exc:
        raise Unverifiable(str(exc)) from None
    try:
        bus = EventBus()
        bus.bind(asyncio.get_running_loop())
        if model is not None:
            registry = ModelRegistry([], store, bus)
            _progress(f"hashing {model.name} (cached after the first time)")
            try:
                return model_key(model), await registry.hash_now(model)
            except GgufError as exc:
                raise Unverifiable(str(exc)) from None
        registry = ModelRegistry(list(config.paths.models_dirs), store, bus)
        models = await asyncio.to_thread(registry.scan)
        for info in models:
            if info.sha256 == sha256:
                return info.path, sha256
        for info in models:  # not hashed yet: hash the rest, the cache keeps the result
            if info.sha256 is None and info.error is None:
                _progress(f"hashing {Path(info.path).name}")
                try:
                    if await registry.hash_now(info.path) == sha256:
                        return info.path, sha256
                except GgufError:
                    continue
        dirs = ", ".join(str(d) for d in config.paths.models_dirs)
        raise Unverifiable(
            f"no model with SHA-256 {sha256} in {dirs}; put the job's GGUF file there or "
            "pass it with --model PATH"
        )
    finally:
        store.close()


def _expected_signer(config: Config, signer: str | None, from_archive: bool) -> str | None:
    """--signer, else (for this node's own archive) the node key's address when readable."""
    if signer is not None or not from_archive:
        return signer
    from fabstir_tui.engine.chain.wallet import keystore_path, read_address

    try:
        return read_address(keystore_path(config))
    except Exception:  # no key yet or an unreadable keystore: the signature is still checked
        return None


async def _verify(
    config: Config, job: Any, model: Path | None, top_k: int, signer: str | None
) -> Any:
    from fabstir_tui.engine.p2p.request_auth import AuthDomain
    from fabstir_tui.engine.proofs.verify import VerifySettings, verify_job

    path, digest = await _find_model(config, job.model_sha256, model)
    settings = VerifySettings(
        domain=AuthDomain(job.chain_id, job.contract),
        inference=config.inference,
        top_k=top_k,
        expected_signer=signer,
        model_file_sha256=digest,
        progress=_progress,
    )
    return await verify_job(job, path, settings)


def run_verify(
    config: Config,
    job_id: str | None,
    *,
    session: bool,
    top_k: int | None,
    model: Path | None,
    as_json: bool,
    signer: str | None,
    files: tuple[Path | None, Path | None, Path | None, Path | None],
) -> int:
    receipt_file, prompt_file, output_file, gen_file = files
    try:
        if receipt_file is not None:
            if prompt_file is None or output_file is None or model is None:
                raise Unverifiable("--receipt needs --prompt-file, --output-file and --model")
            job = _from_files(config, receipt_file, prompt_file, output_file, gen_file)
            if job_id is not None and job_id != job.job_id:
                raise Unverifiable(f"the receipt is for {job.kind} {job.job_id}, not {job_id}")
        else:
            if job_id is None or not job_id.isdigit() or job_id.startswith("0"):
                raise Unverifiable("JOB must be a decimal job id (or use --receipt FILE ...)")
            job = _archived(config, job_id, "session" if session else "job")
        expected = _expected_signer(config, signer, receipt_file is None)
        k = top_k if top_k is not None else config.jobs.verify_top_k
        report = asyncio.run(_verify(config, job, model, k, expected))
    except Unverifiable as exc:
        if as_json:
            emit_json({"verdict": "error", "error": str(exc)})
        return fail(f"cannot verify: {exc}", EXIT_UNVERIFIED)
    if as_json:
        emit_json(report.to_json())
    else:
        sys.stdout.write("\n".join(report.lines()) + "\n")
        sys.stdout.flush()
    return _EXITS[report.verdict]


@click.command("verify")
@click.argument("job_id", metavar="JOB", required=False)
@click.option("--session", is_flag=True, help="JOB is a session id, not a job id.")
@click.option(
    "--top-k",
    type=click.IntRange(1, 1000),
    help="Output tokens must rank in the top K (default jobs.verify_top_k; a sampled job's "
    "own top_k if larger).",
)
@click.option("--model", type=click.Path(path_type=Path, dir_okay=False), help="The GGUF file.")
@click.option("--signer", help="Address the receipt must be signed by.")
@click.option(
    "--receipt",
    "receipt_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Receipt JSON (or the end frame holding it), for a client without the host's disk.",
)
@click.option(
    "--prompt-file", type=click.Path(path_type=Path, dir_okay=False), help="With --receipt."
)
@click.option(
    "--output-file", type=click.Path(path_type=Path, dir_okay=False), help="With --receipt."
)
@click.option(
    "--generation-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="JSON sampler settings (temperature, top_k, top_p, min_p, repeat_penalty, seed, "
    "max_tokens) for exact regeneration with --receipt.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    job_id: str | None,
    session: bool,
    top_k: int | None,
    model: Path | None,
    signer: str | None,
    receipt_file: Path | None,
    prompt_file: Path | None,
    output_file: Path | None,
    generation_file: Path | None,
    as_json: bool,
) -> None:
    """Re-run a finished job and check its signed receipt (exit 0 match, 1 mismatch, 2 error).

    A signed commitment checked by re-execution, not a zero-knowledge proof.
    """
    try:
        config = ctx.obj.load().config
    except ConfigError as exc:
        ctx.exit(fail(str(exc), EXIT_USAGE))
        return
    files = (receipt_file, prompt_file, output_file, generation_file)
    ctx.exit(
        run_verify(
            config,
            job_id,
            session=session,
            top_k=top_k,
            model=model,
            as_json=as_json,
            signer=signer,
            files=files,
        )
    )
