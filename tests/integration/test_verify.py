"""`verify`: honest jobs re-execute to a match; altered outputs, forged receipts and the wrong
model do not. Real llama.cpp on the real SmolLM2 (the tiny random model's byte-soup outputs do
not survive re-tokenisation), real signatures, a real archive; the CLI in a subprocess."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabstir_tui.config import InferenceSection
from fabstir_tui.engine.inference.stream import GenerationRequest
from fabstir_tui.engine.inference.worker_process import WorkerProcess
from fabstir_tui.engine.jobs.archive import ArchivedJob, archive_for
from fabstir_tui.engine.p2p.request_auth import AuthDomain
from fabstir_tui.engine.proofs import build_receipt, sign_receipt
from fabstir_tui.engine.proofs.verify import (
    VerifySettings,
    load_settings_for,
    own_runtime,
    verify_job,
)
from fabstir_tui.engine.proofs.verify_report import VerifyReport

pytestmark = pytest.mark.slow

EXE = Path(sys.executable).parent / "fabstir-tui"
HOST_KEY = "0x" + "4c" * 32
OTHER_KEY = "0x" + "5d" * 32
DOMAIN = AuthDomain(31337, "")
INFERENCE = InferenceSection(threads=1, context_length=1024)
PROMPT = "The three primary colours are"
SWAP = "zebra"


@dataclasses.dataclass(frozen=True)
class Honest:
    greedy: ArchivedJob
    sampled: ArchivedJob
    model: Path
    sha256: str


async def _run_job(
    worker: WorkerProcess, loaded: Any, model: Path, sha: str, job_id: str, **sampler: Any
) -> ArchivedJob:
    """What the host does: generate, sign a receipt over it with its runtime, archive it."""
    request = GenerationRequest(prompt=PROMPT, max_tokens=32, **sampler)
    stream = worker.generate(request)
    output = "".join([piece async for piece in stream])
    runtime = own_runtime(request, loaded, str(model), INFERENCE)
    receipt = build_receipt(
        model_sha256=sha,
        runtime=runtime,
        prompt=PROMPT,
        output=output,
        prompt_tokens=stream.stats.prompt_tokens,
        completion_tokens=stream.stats.completion_tokens,
        job_id=int(job_id),
    )
    signed = sign_receipt(HOST_KEY, DOMAIN, receipt)
    generation = {k: runtime[k] for k in ("temperature", "top_k", "top_p", "min_p")}
    generation |= {k: runtime[k] for k in ("repeat_penalty", "seed", "max_tokens")}
    return ArchivedJob(
        kind="job",
        chain_id=DOMAIN.chain_id,
        contract="",
        job_id=job_id,
        prompt=PROMPT,
        output=output,
        model_sha256=sha,
        receipt=signed.to_wire(),
        generation=generation,
        prompt_tokens=stream.stats.prompt_tokens,
        completion_tokens=stream.stats.completion_tokens,
        finished_at=1_000.0,
    )


@pytest.fixture(scope="module")
def honest(smollm_gguf: Path) -> Honest:
    """Two honest jobs (greedy; seeded sampling) from one worker, as a host would run them."""
    import asyncio

    sha = hashlib.sha256(smollm_gguf.read_bytes()).hexdigest()

    async def main() -> Honest:
        worker = WorkerProcess(str(smollm_gguf), lambda _l, _t: None, lambda _w, _r: None)
        loaded = await worker.start(
            load_settings_for(str(smollm_gguf), INFERENCE), lambda _s, _f: None
        )
        try:
            greedy = await _run_job(worker, loaded, smollm_gguf, sha, "11", temperature=0.0)
            sampled = await _run_job(
                worker, loaded, smollm_gguf, sha, "12", temperature=0.8, seed=1234
            )
        finally:
            await worker.stop()
        return Honest(greedy, sampled, smollm_gguf, sha)

    return asyncio.run(main())


def verify(job: ArchivedJob, model: Path, **changes: Any) -> VerifyReport:
    import asyncio

    settings = VerifySettings(domain=DOMAIN, inference=INFERENCE, **changes)
    return asyncio.run(verify_job(job, str(model), settings))


def check(report: VerifyReport, name: str) -> dict[str, Any]:
    [found] = [c.to_json() for c in report.checks if c.name == name]
    return found


def altered(job: ArchivedJob) -> ArchivedJob:
    """The output with one word mid-way replaced by an unlikely one."""
    words = job.output.split(" ")
    middle = len(words) // 2
    assert len(words) > 4 and words[middle] != SWAP
    words[middle] = SWAP
    return dataclasses.replace(job, output=" ".join(words))


def test_honest_greedy_job_matches_with_exact_regeneration(honest: Honest) -> None:
    report = verify(honest.greedy, honest.model, top_k=8)
    assert report.verdict == "match", report.lines()
    regen = check(report, "exact regeneration")
    assert regen["status"] == "pass" and regen["ran"] and regen["matched"]
    top = check(report, "top-k")
    assert top["status"] == "pass" and top["k"] == 8
    assert top["checked"] >= honest.greedy.completion_tokens - 2 and top["worst_rank"] == 1
    for name in ("receipt signature", "prompt hash", "output hash", "model hash", "model file"):
        assert check(report, name)["status"] == "pass", name
    assert json.loads(json.dumps(report.to_json()))["verdict"] == "match"


def test_honest_seeded_sampled_job_matches(honest: Honest) -> None:
    report = verify(honest.sampled, honest.model, top_k=8)
    assert report.verdict == "match", report.lines()
    assert check(report, "exact regeneration")["matched"] is True
    assert check(report, "top-k")["worst_rank"] <= 40


def test_altered_output_names_the_first_bad_token(honest: Honest) -> None:
    job = altered(honest.greedy)
    report = verify(job, honest.model, top_k=8)
    assert report.verdict == "mismatch"
    assert check(report, "output hash")["status"] == "fail"
    assert check(report, "prompt hash")["status"] == "pass"
    assert check(report, "receipt signature")["status"] == "pass"
    regen = check(report, "exact regeneration")
    assert regen["status"] == "fail" and regen["ran"] and not regen["matched"]
    assert regen["first_difference"] <= job.output.index(SWAP)
    top = check(report, "top-k")
    assert top["status"] == "fail" and top["outside"] >= 1
    first = top["first_outside"]
    assert first["position"] > 0 and first["rank"] > 8
    assert first["got"].strip() and SWAP.startswith(first["got"].strip())
    assert first["expected"] != first["got"]


def test_receipt_from_another_key_or_with_a_tampered_signature_is_a_mismatch(
    honest: Honest,
) -> None:
    from eth_account import Account

    host = Account.from_key(HOST_KEY).address
    wire = dict(honest.greedy.receipt or {})
    forged = dict(wire, signature=sign_receipt(OTHER_KEY, DOMAIN, _receipt(wire)).signature)
    sig = wire["signature"]
    tampered = dict(wire, signature=sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:])
    other_signer = sign_receipt(OTHER_KEY, DOMAIN, _receipt(wire)).to_wire()
    cases = [(forged, None), (tampered, None), (other_signer, host)]
    for receipt, expected_signer in cases:
        job = dataclasses.replace(honest.greedy, receipt=receipt)
        # A wrong model file stops before re-execution: these cases only need the receipt.
        report = verify(
            job, honest.model, expected_signer=expected_signer, model_file_sha256="0" * 64
        )
        assert report.verdict == "mismatch", report.lines()
        assert check(report, "receipt signature")["status"] == "fail"
    assert "expected" in check(report, "receipt signature")["detail"]


def _receipt(wire: dict[str, Any]) -> Any:
    from fabstir_tui.engine.proofs import parse_receipt

    return parse_receipt(wire).receipt


def test_wrong_model_file_cannot_verify_and_a_lying_model_hash_is_a_mismatch(
    honest: Honest, tiny_gguf: Path
) -> None:
    report = verify(honest.greedy, tiny_gguf)
    assert report.verdict == "error"
    line = check(report, "model file")
    assert line["status"] == "error" and honest.sha256 in line["detail"]
    assert not [c for c in report.checks if c.name in ("top-k", "exact regeneration")]
    lying = dataclasses.replace(honest.greedy, model_sha256="ee" * 32)
    report = verify(lying, honest.model, model_file_sha256="ee" * 32)
    assert report.verdict == "mismatch"
    assert check(report, "model hash")["status"] == "fail"


# --- the command line ---------------------------------------------------------------------


def run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = data_dir / "empty-config.toml"  # never the operator's own config
    config.touch()
    env = {**os.environ, "FABSTIR_CONFIG": str(config)}
    return subprocess.run(
        [str(EXE), "--data-dir", str(data_dir), "--threads", "1", "--ctx-size", "1024", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture(scope="module")
def cli_data(honest: Honest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("verify-cli")
    archive = archive_for(data_dir)
    archive.put(honest.greedy)
    archive.put(dataclasses.replace(altered(honest.greedy), job_id="13"))
    yield data_dir


def test_cli_exit_codes_and_json(honest: Honest, cli_data: Path) -> None:
    models = ("--models-dir", str(honest.model.parent))
    ok = run_cli(cli_data, *models, "verify", "11")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("verdict: MATCH") and "zero-knowledge" in ok.stdout
    assert "verify: scoring" in ok.stderr and "verify: regenerating" in ok.stderr

    bad = run_cli(cli_data, *models, "verify", "13", "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["verdict"] == "mismatch"
    failed = {c["name"] for c in doc["checks"] if c["status"] == "fail"}
    assert {"output hash", "top-k", "exact regeneration"} <= failed

    missing = run_cli(cli_data, *models, "verify", "99")
    assert missing.returncode == 2
    assert "cannot verify: no archived job 99" in missing.stderr

    wrong = run_cli(cli_data, "verify", "11", "--model", str(honest.model.parent / "x.gguf"))
    assert wrong.returncode == 2 and "cannot verify" in wrong.stderr


def test_cli_with_a_clients_files(honest: Honest, cli_data: Path, tiny_gguf: Path) -> None:
    job = honest.greedy
    (cli_data / "receipt.json").write_text(json.dumps({"receipt": job.receipt}), "utf-8")
    (cli_data / "prompt.txt").write_text(job.prompt, "utf-8")
    (cli_data / "output.txt").write_text(job.output, "utf-8")
    (cli_data / "gen.json").write_text(json.dumps(job.generation), "utf-8")
    files = (
        *("--receipt", str(cli_data / "receipt.json")),
        *("--prompt-file", str(cli_data / "prompt.txt")),
        *("--output-file", str(cli_data / "output.txt")),
    )
    res = run_cli(
        cli_data,
        "verify",
        *files,
        *("--generation-file", str(cli_data / "gen.json")),
        *("--model", str(honest.model), "--json"),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "match"
    assert {c["name"]: c["status"] for c in doc["checks"]}["exact regeneration"] == "pass"

    wrong_model = run_cli(cli_data, "verify", *files, "--model", str(tiny_gguf))
    assert wrong_model.returncode == 2, wrong_model.stdout + wrong_model.stderr
    assert "verdict: ERROR" in wrong_model.stdout and "model file" in wrong_model.stdout
