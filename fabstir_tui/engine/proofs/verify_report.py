"""The verdict of `verify`: one line per check, JSON-serialisable, worded for an operator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

CheckStatus = Literal["pass", "fail", "skip", "error"]
Verdict = Literal["match", "mismatch", "error"]

NATURE: Final = (
    "a signed commitment checked by re-execution, not a zero-knowledge proof: a match means "
    "this machine's model reproduces the output, a mismatch is evidence for a dispute"
)


@dataclass(frozen=True)
class Check:
    """One verified property: `fail` is evidence against the host, `error` means not checked."""

    name: str
    status: CheckStatus
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, **self.data}


@dataclass
class VerifyReport:
    """Every check of one job; the verdict follows from them."""

    kind: str
    job_id: str
    chain_id: int
    contract: str
    model_path: str | None = None
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: CheckStatus, detail: str, **data: Any) -> Check:
        check = Check(name, status, detail, data)
        self.checks.append(check)
        return check

    @property
    def verdict(self) -> Verdict:
        """Any failed check is a mismatch; otherwise anything unchecked makes it an error."""
        statuses = {check.status for check in self.checks}
        if "fail" in statuses:
            return "mismatch"
        if "error" in statuses or "pass" not in statuses:
            return "error"
        return "match"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "kind": self.kind,
            "job_id": self.job_id,
            "chain_id": self.chain_id,
            "contract": self.contract,
            "model_path": self.model_path,
            "checks": [check.to_json() for check in self.checks],
            "nature": NATURE,
        }

    def lines(self) -> list[str]:
        """Human form: the verdict, then one line per check."""
        marks = {"pass": "ok  ", "fail": "FAIL", "skip": "skip", "error": "ERR "}
        head = f"{self.kind} {self.job_id} on chain {self.chain_id}"
        out = [f"verdict: {self.verdict.upper()} ({head})"]
        out += [f"  [{marks[c.status]}] {c.name}: {c.detail}" for c in self.checks]
        out.append(f"note: {NATURE}")
        return out
