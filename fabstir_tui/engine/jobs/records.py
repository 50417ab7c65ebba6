"""Records of the job book: keys, effects, rows and history, and how SQLite rows map to them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from fabstir_tui.engine.jobs.states import JobKind, JobState

# Columns a transition or an upsert may set; amounts are decimal TEXT (uint256).
JOB_FIELDS: tuple[str, ...] = (
    "model_id",
    "client",
    "max_tokens",
    "price",
    "deadline",
    "prompt_hash",
    "output_hash",
    "receipt_root",
    "tokens_used",
    "detail",
)
_INT_FIELDS = frozenset({"max_tokens", "deadline", "tokens_used"})
KEY_WHERE = "kind=? AND chain_id=? AND contract=? AND job_id=?"
JOB_COLUMNS = "kind, chain_id, contract, job_id, state, " + ", ".join(JOB_FIELDS)
JOB_COLUMNS += ", tx_hashes, created_at, updated_at"

FieldValue = str | int | None


class JobBookError(RuntimeError):
    """A book operation that cannot be applied (unknown job, effect still pending, bad field)."""


@dataclass(frozen=True)
class JobKey:
    """Identifies a job across chains and contract deployments; ids are decimal (uint256)."""

    kind: JobKind
    chain_id: int
    contract: str
    job_id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "contract", self.contract.lower())
        object.__setattr__(self, "job_id", str(int(self.job_id)))

    @property
    def params(self) -> tuple[str, int, str, str]:
        return (self.kind.value, self.chain_id, self.contract, self.job_id)

    def __str__(self) -> str:
        return f"{self.kind}#{self.job_id}@{self.chain_id}:{self.contract}"


@dataclass(frozen=True)
class Effect:
    """A side effect a transition intends: action like "claim tx", its tx hash once signed."""

    action: str
    tx_hash: str | None = None
    detail: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table as the pipeline and the UI read it."""

    key: JobKey
    state: JobState
    model_id: str | None
    client: str | None
    max_tokens: int | None
    price: str | None
    deadline: int | None
    prompt_hash: str | None
    output_hash: str | None
    receipt_root: str | None
    tokens_used: int | None
    detail: str | None
    tx_hashes: Mapping[str, str]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class PendingEffect:
    """An effect written but not confirmed done: re-check it (by tx hash) before anything else."""

    effect_id: int
    key: JobKey
    state: JobState
    effect: Effect
    created_at: float


@dataclass(frozen=True)
class TransitionRecord:
    """One row of a job's history; effect is what that step intended, if anything."""

    from_state: JobState | None
    to_state: JobState
    at: float
    effect: Effect | None
    effect_status: str | None
    effect_result: Mapping[str, object] | None


def check_fields(fields: Mapping[str, FieldValue]) -> None:
    """Unknown columns or wrong types are caller bugs; refuse them before touching the DB."""
    for name, value in fields.items():
        if name not in JOB_FIELDS:
            raise JobBookError(f"unknown job field {name!r} (known: {', '.join(JOB_FIELDS)})")
        if value is None:
            continue
        expected = int if name in _INT_FIELDS else str
        if not isinstance(value, expected) or isinstance(value, bool):
            raise JobBookError(f"job field {name} must be {expected.__name__}, got {value!r}")


def record_from_row(row: tuple[object, ...]) -> JobRecord:
    kind, chain_id, contract, job_id, state = row[:5]
    values = row[5 : 5 + len(JOB_FIELDS)]
    tx_hashes, created_at, updated_at = row[5 + len(JOB_FIELDS) :]
    by_name = dict(zip(JOB_FIELDS, values, strict=True))

    def text(name: str) -> str | None:
        value = by_name[name]
        return None if value is None else str(value)

    def number(name: str) -> int | None:
        value = by_name[name]
        return None if value is None else int(str(value))

    return JobRecord(
        key=JobKey(JobKind(str(kind)), int(str(chain_id)), str(contract), str(job_id)),
        state=JobState(str(state)),
        model_id=text("model_id"),
        client=text("client"),
        max_tokens=number("max_tokens"),
        price=text("price"),
        deadline=number("deadline"),
        prompt_hash=text("prompt_hash"),
        output_hash=text("output_hash"),
        receipt_root=text("receipt_root"),
        tokens_used=number("tokens_used"),
        detail=text("detail"),
        tx_hashes=json.loads(str(tx_hashes)),
        created_at=float(str(created_at)),
        updated_at=float(str(updated_at)),
    )


def effect_from_row(action: object, detail: object, tx_hash: object) -> Effect:
    return Effect(
        action=str(action),
        tx_hash=None if tx_hash is None else str(tx_hash),
        detail=json.loads(str(detail)),
    )
