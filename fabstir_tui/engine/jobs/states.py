"""Job and session states (DESIGN §3, §11.7-11.9) as data: one table of allowed transitions."""

from __future__ import annotations

import enum
from collections.abc import Mapping


class JobKind(enum.StrEnum):
    """Open marketplace jobs and direct sessions run through one pipeline with two tables."""

    OPEN = "job"
    SESSION = "session"


class JobState(enum.StrEnum):
    """Every state a job or session can be in; the kind's table says which apply."""

    SEEN = "seen"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    CLAIMED = "claimed"
    RUNNING = "running"
    DELIVERED = "delivered"
    SUBMITTED = "submitted"
    RELEASED = "released"
    REJECTED = "rejected"
    EXPIRED = "expired"
    FAILED = "failed"
    CHALLENGED = "challenged"
    REFUNDED = "refunded"
    LOST = "lost"  # another host claimed it first (§11.7)
    UNCLAIMED = "unclaimed"  # claim given back: the prompt did not arrive in time (§11.8)
    ACTIVE = "active"  # sessions only (§11.9)
    COMPLETED = "completed"
    TIMED_OUT = "timed_out"


S = JobState

# Open jobs: the happy path seen → … → released, with the side exits of DESIGN §3.
# A terminal state maps to an empty set.
OPEN_JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    S.SEEN: frozenset({S.PENDING_APPROVAL, S.APPROVED, S.REJECTED, S.LOST, S.EXPIRED}),
    S.PENDING_APPROVAL: frozenset({S.APPROVED, S.REJECTED, S.LOST, S.EXPIRED}),
    S.APPROVED: frozenset({S.CLAIMED, S.LOST, S.EXPIRED, S.FAILED}),
    # The claim tx may revert because a faster host won: claimed → lost.
    S.CLAIMED: frozenset({S.RUNNING, S.UNCLAIMED, S.LOST, S.EXPIRED, S.FAILED}),
    # A run cut short (client gone, worker died, node restarted) goes back to claimed: the
    # client may send its request again until the deadline or the delivery limit.
    S.RUNNING: frozenset({S.DELIVERED, S.CLAIMED, S.EXPIRED, S.FAILED}),
    S.DELIVERED: frozenset({S.SUBMITTED, S.EXPIRED, S.FAILED}),
    # A submit that reverts (deadline passed meanwhile) fails the job: nothing is paid.
    S.SUBMITTED: frozenset({S.RELEASED, S.CHALLENGED, S.FAILED, S.EXPIRED}),
    # The arbiter decides: rejected challenge → released to us, upheld → refunded to the client.
    S.CHALLENGED: frozenset({S.RELEASED, S.REFUNDED}),
    S.RELEASED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
    S.FAILED: frozenset(),
    S.REFUNDED: frozenset(),
    S.LOST: frozenset(),
    S.UNCLAIMED: frozenset(),
}

SESSION_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    # The client may end a session (or it may time out) before the operator decided.
    S.PENDING_APPROVAL: frozenset({S.ACTIVE, S.REJECTED, S.COMPLETED, S.TIMED_OUT}),
    S.ACTIVE: frozenset({S.COMPLETED, S.TIMED_OUT}),
    S.COMPLETED: frozenset(),
    S.TIMED_OUT: frozenset(),
    S.REJECTED: frozenset(),
}

TRANSITIONS: Mapping[JobKind, Mapping[JobState, frozenset[JobState]]] = {
    JobKind.OPEN: OPEN_JOB_TRANSITIONS,
    JobKind.SESSION: SESSION_TRANSITIONS,
}

# Where a newly seen job or session starts.
INITIAL_STATE: Mapping[JobKind, JobState] = {
    JobKind.OPEN: S.SEEN,
    JobKind.SESSION: S.PENDING_APPROVAL,
}

# Open jobs we have not taken yet: the market list (§11.7).
MARKET_STATES: frozenset[JobState] = frozenset({S.SEEN, S.PENDING_APPROVAL})

# Work that is ours and not finished: our queue, per kind.
QUEUE_STATES: Mapping[JobKind, frozenset[JobState]] = {
    JobKind.OPEN: frozenset(
        {S.APPROVED, S.CLAIMED, S.RUNNING, S.DELIVERED, S.SUBMITTED, S.CHALLENGED}
    ),
    JobKind.SESSION: frozenset({S.PENDING_APPROVAL, S.ACTIVE}),
}


class IllegalTransition(ValueError):
    """A transition the table does not allow: a bug or a stale event, never silently applied."""


def states_of(kind: JobKind) -> frozenset[JobState]:
    """The states that exist for this kind of work."""
    return frozenset(TRANSITIONS[kind])


def is_terminal(kind: JobKind, state: JobState) -> bool:
    """A terminal state allows no further transition."""
    return not TRANSITIONS[kind][state]


def allowed_next(kind: JobKind, state: JobState) -> frozenset[JobState]:
    """The states reachable in one step; empty for terminal or unknown states."""
    return TRANSITIONS[kind].get(state, frozenset())


def check_transition(kind: JobKind, job: str, from_state: JobState, to_state: JobState) -> None:
    """Refuse any step the table lacks, naming the job and both states so logs explain it."""
    table = TRANSITIONS[kind]
    for state in (from_state, to_state):
        if state not in table:
            raise IllegalTransition(
                f"{kind} {job}: cannot go from {from_state} to {to_state}: "
                f"{state} is not a {kind} state"
            )
    allowed = table[from_state]
    if to_state in allowed:
        return
    if not allowed:
        raise IllegalTransition(
            f"{kind} {job}: cannot go from {from_state} to {to_state}: {from_state} is terminal"
        )
    raise IllegalTransition(
        f"{kind} {job}: cannot go from {from_state} to {to_state} "
        f"(allowed from {from_state}: {', '.join(sorted(allowed))})"
    )
