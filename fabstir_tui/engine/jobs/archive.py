"""Finished jobs kept for `fabstir-tui verify` (DESIGN §11.5, §11.15): prompt, output, model,
receipt and sampler settings, one private file each, deleted by a retention sweep.

Prompts and outputs live only here (mode 0700 directory, 0600 files), never in a log. The
archive is not tamper-proof and needs not be: the signed receipt's hashes are the check.
Layout: ``<root>/<kind>/<chain id>/<contract or "no-contract">/<job id>.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from fabstir_tui.engine.durable import write_atomically

KINDS: Final = ("job", "session")
NO_CONTRACT: Final = "no-contract"
_DECIMAL = re.compile(r"[1-9][0-9]{0,77}")
_ADDRESS = re.compile(r"0x[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIELDS: Final = (
    "kind",
    "chain_id",
    "contract",
    "job_id",
    "prompt",
    "output",
    "model_sha256",
    "receipt",
    "generation",
    "prompt_tokens",
    "completion_tokens",
    "finished_at",
)


class ArchiveError(RuntimeError):
    """An archive entry that cannot be read or written; the message names the file."""


@dataclass(frozen=True)
class ArchivedJob:
    """What a verifier needs to re-run one finished job or session turn."""

    kind: str  # "job" | "session"
    chain_id: int
    contract: str  # JobMarketplace address, lower-case 0x-hex, or "" when unset
    job_id: str  # decimal id
    prompt: str
    output: str
    model_sha256: str  # 64 lower-case hex, no 0x
    receipt: dict[str, Any] | None  # the signed receipt's wire form (parse_receipt reads it)
    generation: dict[str, Any]  # temperature, top_k, top_p, min_p, repeat_penalty, seed, max_tokens
    prompt_tokens: int
    completion_tokens: int
    finished_at: float

    def __post_init__(self) -> None:
        _check_key(self.kind, self.chain_id, self.contract, self.job_id)
        if not _SHA256.fullmatch(self.model_sha256):
            raise ValueError("model_sha256 must be 64 lower-case hex digits without 0x")
        if not math.isfinite(self.finished_at):
            raise ValueError("finished_at must be a finite timestamp")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode("utf-8")


def _check_key(kind: str, chain_id: int, contract: str, job_id: str) -> None:
    """Refuse anything that could step outside the archive's folders."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id < 1:
        raise ValueError("chain_id must be a positive integer")
    if contract and not _ADDRESS.fullmatch(contract):
        raise ValueError("contract must be empty or a lower-case 0x address")
    if not isinstance(job_id, str) or not _DECIMAL.fullmatch(job_id):
        raise ValueError(f"job id {job_id!r} is not a non-zero decimal number")


def _from_document(document: Any, path: Path) -> ArchivedJob:
    if not isinstance(document, dict):
        raise ArchiveError(f"archive file {path} is not a JSON object")
    missing = [name for name in _FIELDS if name not in document]
    if missing:
        raise ArchiveError(f"archive file {path} lacks {', '.join(missing)}")
    values = {name: document[name] for name in _FIELDS}
    checks: dict[str, type | tuple[type, ...]] = {
        "prompt": str,
        "output": str,
        "generation": dict,
        "receipt": (dict, type(None)),
        "prompt_tokens": int,
        "completion_tokens": int,
        "finished_at": (int, float),
    }
    for name, kind in checks.items():
        if not isinstance(values[name], kind):
            raise ArchiveError(f"archive file {path}: field {name!r} has the wrong type")
    values["finished_at"] = float(values["finished_at"])
    try:
        return ArchivedJob(**values)
    except (TypeError, ValueError) as exc:
        raise ArchiveError(f"archive file {path}: {exc}") from None


class JobArchive:
    """One JSON file per finished job under <data_dir>/archive; atomic writes, private modes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, kind: str, chain_id: int, contract: str, job_id: str) -> Path:
        """The file of one job (the key is validated: no path can leave the archive)."""
        contract = contract.lower()
        _check_key(kind, chain_id, contract, job_id)
        return self.root / kind / str(chain_id) / (contract or NO_CONTRACT) / f"{job_id}.json"

    def put(self, job: ArchivedJob) -> None:
        """Write (or overwrite) the job's file: temp file, fsync, rename, fsync the folder."""
        target = self.path_for(job.kind, job.chain_id, job.contract, job.job_id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.root, 0o700)
        folder = self.root
        for part in target.parent.relative_to(self.root).parts:
            folder = folder / part
            folder.mkdir(mode=0o700, exist_ok=True)
        write_atomically(target, job.to_json())

    def _read(self, path: Path) -> ArchivedJob:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ArchiveError(f"cannot read archive file {path}: {exc.strerror or exc}") from None
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"archive file {path} is not valid JSON: {exc}") from None
        return _from_document(document, path)

    def get(self, kind: str, chain_id: int, contract: str, job_id: str) -> ArchivedJob | None:
        """The archived job, None when there is none; ArchiveError for a corrupt file."""
        path = self.path_for(kind, chain_id, contract, job_id)
        if not path.is_file():
            return None
        return self._read(path)

    def _files(self, job_id: str = "*") -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob(f"*/*/*/{job_id}.json") if p.is_file())

    def find(self, job_id: str) -> list[ArchivedJob]:
        """Every archived job or session with this id, any chain or contract (CLI lookup)."""
        if not _DECIMAL.fullmatch(job_id):
            raise ValueError(f"job id {job_id!r} is not a non-zero decimal number")
        return [self._read(path) for path in self._files(job_id)]

    def sweep(self, older_than_s: float, now: float | None = None) -> int:
        """Delete entries finished more than `older_than_s` ago (corrupt ones by mtime);
        returns how many went. Stray temp files of an interrupted write go too."""
        cutoff = (time.time() if now is None else now) - older_than_s
        removed = 0
        for path in self._files():
            try:
                finished = self._read(path).finished_at
            except ArchiveError:
                try:
                    finished = path.stat().st_mtime
                except OSError:
                    continue
            if finished < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        if self.root.is_dir():
            for temp in self.root.glob("*/*/*/.tmp-*"):
                with contextlib.suppress(OSError):
                    if temp.stat().st_mtime < cutoff:
                        temp.unlink()
        return removed


def archive_for(data_dir: Path) -> JobArchive:
    """The node's job archive under <data_dir>/archive."""
    return JobArchive(Path(data_dir) / "archive")
