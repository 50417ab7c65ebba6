"""The job archive `verify` reads: round trip, private modes, clear errors, retention sweep."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from fabstir_tui.engine.jobs.archive import ArchivedJob, ArchiveError, JobArchive, archive_for

CONTRACT = "0x" + "ab" * 20


def make_job(job_id: str = "7", **changes: object) -> ArchivedJob:
    job = ArchivedJob(
        kind="job",
        chain_id=31337,
        contract=CONTRACT,
        job_id=job_id,
        prompt="what is a gpu? ünïcode ✓",
        output="a chip that multiplies matrices",
        model_sha256="0f" * 32,
        receipt={"jobId": job_id, "signer": "0x" + "11" * 20},
        generation={"temperature": 0.0, "top_k": 40, "seed": 1, "max_tokens": 16},
        prompt_tokens=9,
        completion_tokens=6,
        finished_at=1_000.0,
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def test_put_get_round_trip_with_private_modes(tmp_path: Path) -> None:
    archive = archive_for(tmp_path)
    job = make_job()
    archive.put(job)
    assert archive.get("job", 31337, CONTRACT, "7") == job
    assert archive.get("job", 31337, CONTRACT.upper().replace("0X", "0x"), "7") == job
    path = archive.path_for("job", 31337, CONTRACT, "7")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (archive.root, *path.relative_to(archive.root).parents):
        mode = stat.S_IMODE((archive.root / folder).stat().st_mode)
        assert mode == 0o700, folder
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]


def test_put_overwrites_and_keys_are_separate(tmp_path: Path) -> None:
    archive = JobArchive(tmp_path / "archive")
    archive.put(make_job())
    archive.put(make_job(output="second answer"))
    archive.put(make_job(kind="session", output="a session turn"))
    archive.put(make_job(chain_id=84532))
    got = archive.get("job", 31337, CONTRACT, "7")
    assert got is not None and got.output == "second answer"
    session = archive.get("session", 31337, CONTRACT, "7")
    assert session is not None and session.output == "a session turn"
    assert archive.get("job", 31337, "", "7") is None
    assert archive.get("job", 31337, CONTRACT, "8") is None
    assert {(j.kind, j.chain_id) for j in archive.find("7")} == {
        ("job", 31337),
        ("session", 31337),
        ("job", 84532),
    }
    assert archive.find("8") == []


def test_no_contract_entries_have_their_own_folder(tmp_path: Path) -> None:
    archive = archive_for(tmp_path)
    archive.put(make_job(contract=""))
    assert archive.get("job", 31337, "", "7") == make_job(contract="")
    assert archive.path_for("job", 31337, "", "7").parent.name == "no-contract"


@pytest.mark.parametrize(
    "changes",
    [
        {"job_id": "../../etc"},
        {"job_id": "007"},
        {"job_id": "0"},
        {"kind": "other"},
        {"contract": "../x"},
        {"chain_id": 0},
        {"model_sha256": "0x" + "0f" * 32},
        {"finished_at": float("nan")},
    ],
)
def test_bad_keys_and_fields_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_job(**changes)


def test_lookups_refuse_paths_outside_the_archive(tmp_path: Path) -> None:
    archive = archive_for(tmp_path)
    with pytest.raises(ValueError):
        archive.get("job", 31337, CONTRACT, "../7")
    with pytest.raises(ValueError):
        archive.find("*")


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'{"kind": "job"}', b"\xff\xfe"],
)
def test_corrupt_file_is_an_error_naming_it(tmp_path: Path, content: bytes) -> None:
    archive = archive_for(tmp_path)
    archive.put(make_job())
    path = archive.path_for("job", 31337, CONTRACT, "7")
    path.write_bytes(content)
    with pytest.raises(ArchiveError, match=str(path)):
        archive.get("job", 31337, CONTRACT, "7")
    with pytest.raises(ArchiveError, match=str(path)):
        archive.find("7")


def test_wrong_field_type_is_an_error_naming_the_field(tmp_path: Path) -> None:
    archive = archive_for(tmp_path)
    archive.put(make_job())
    path = archive.path_for("job", 31337, CONTRACT, "7")
    document = json.loads(path.read_text("utf-8"))
    document["prompt"] = 5
    path.write_text(json.dumps(document), "utf-8")
    with pytest.raises(ArchiveError, match="'prompt'"):
        archive.get("job", 31337, CONTRACT, "7")


def test_sweep_deletes_only_old_entries(tmp_path: Path) -> None:
    archive = archive_for(tmp_path)
    archive.put(make_job("1", finished_at=100.0))
    archive.put(make_job("2", finished_at=900.0))
    archive.put(make_job("3", finished_at=950.0))
    corrupt = archive.path_for("job", 31337, CONTRACT, "3")
    corrupt.write_bytes(b"garbage")  # judged by its mtime: now, so it stays
    assert archive.sweep(older_than_s=200.0, now=1_000.0) == 1
    assert archive.get("job", 31337, CONTRACT, "1") is None
    assert archive.get("job", 31337, CONTRACT, "2") is not None
    assert corrupt.exists()
    assert archive.sweep(older_than_s=0.0, now=2_000.0) == 1
    assert archive.find("2") == []
    assert archive_for(tmp_path / "empty").sweep(1.0) == 0


def test_config_has_the_retention_and_top_k_settings() -> None:
    from pydantic import ValidationError

    from fabstir_tui.config import JobsSection

    jobs = JobsSection()
    assert (jobs.retention_days, jobs.verify_top_k) == (7, 8)
    assert JobsSection(retention_days=0.5, verify_top_k=1000).verify_top_k == 1000
    for bad in ({"retention_days": 0}, {"verify_top_k": 0}, {"verify_top_k": 1001}):
        with pytest.raises(ValidationError):
            JobsSection(**bad)  # type: ignore[arg-type]
