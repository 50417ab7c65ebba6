"""The transition table of jobs and sessions: what it allows, what it refuses, and its shape."""

from __future__ import annotations

import itertools

import pytest

from fabstir_tui.engine.jobs.states import (
    INITIAL_STATE,
    TRANSITIONS,
    IllegalTransition,
    JobKind,
    JobState,
    allowed_next,
    check_transition,
    is_terminal,
    states_of,
)

S = JobState

ALLOWED = [
    (kind, src, dst)
    for kind, table in TRANSITIONS.items()
    for src, dsts in table.items()
    for dst in dsts
]
REFUSED = [
    (kind, src, dst)
    for kind, table in TRANSITIONS.items()
    for src in table
    for dst in JobState
    if dst not in table[src]
]


def reachable(kind: JobKind, start: JobState) -> set[JobState]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in allowed_next(kind, todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize(("kind", "src", "dst"), ALLOWED)
def test_every_allowed_transition_passes(kind: JobKind, src: JobState, dst: JobState) -> None:
    check_transition(kind, "#7", src, dst)


@pytest.mark.parametrize(("kind", "src", "dst"), REFUSED)
def test_every_other_transition_is_refused_naming_job_and_states(
    kind: JobKind, src: JobState, dst: JobState
) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(kind, "#7", src, dst)
    msg = str(info.value)
    assert "#7" in msg and str(dst) in msg and str(src) in msg


def test_terminal_states_say_they_are_terminal() -> None:
    with pytest.raises(IllegalTransition, match="released is terminal"):
        check_transition(JobKind.OPEN, "#1", S.RELEASED, S.SUBMITTED)
    with pytest.raises(IllegalTransition, match="timed_out is terminal"):
        check_transition(JobKind.SESSION, "#1", S.TIMED_OUT, S.ACTIVE)


def test_a_state_of_the_other_kind_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="active is not a job state"):
        check_transition(JobKind.OPEN, "#1", S.ACTIVE, S.COMPLETED)
    with pytest.raises(IllegalTransition, match="claimed is not a session state"):
        check_transition(JobKind.SESSION, "#1", S.PENDING_APPROVAL, S.CLAIMED)


def test_design_happy_paths_are_allowed() -> None:
    path = [S.SEEN, S.PENDING_APPROVAL, S.APPROVED, S.CLAIMED, S.RUNNING, S.DELIVERED]
    path += [S.SUBMITTED, S.RELEASED]
    for src, dst in itertools.pairwise(path):
        check_transition(JobKind.OPEN, "#1", src, dst)
    for src, dst in [(S.PENDING_APPROVAL, S.ACTIVE), (S.ACTIVE, S.COMPLETED)]:
        check_transition(JobKind.SESSION, "#1", src, dst)


def test_side_exits_of_design_exist() -> None:
    exits = {dst for src in TRANSITIONS[JobKind.OPEN] for dst in allowed_next(JobKind.OPEN, src)}
    for state in (S.REJECTED, S.EXPIRED, S.FAILED, S.CHALLENGED, S.REFUNDED, S.LOST, S.UNCLAIMED):
        assert state in exits
    assert S.UNCLAIMED in allowed_next(JobKind.OPEN, S.CLAIMED)  # §11.8
    assert S.LOST in allowed_next(JobKind.OPEN, S.SEEN)  # §11.7


@pytest.mark.parametrize("kind", list(JobKind))
def test_table_shape(kind: JobKind) -> None:
    table = TRANSITIONS[kind]
    states = states_of(kind)
    for dsts in table.values():
        assert dsts <= states  # every target has its own row
    assert reachable(kind, INITIAL_STATE[kind]) == states  # no dead rows
    terminals = {s for s in states if is_terminal(kind, s)}
    assert terminals
    for state in states:  # nothing can get stuck: a terminal is always reachable
        assert reachable(kind, state) & terminals
