"""The job pipeline: states of open jobs and sessions, persisted so a restart resumes them."""

from fabstir_tui.engine.jobs.book import JobBook
from fabstir_tui.engine.jobs.records import (
    Effect,
    JobBookError,
    JobKey,
    JobRecord,
    PendingEffect,
    TransitionRecord,
)
from fabstir_tui.engine.jobs.states import (
    IllegalTransition,
    JobKind,
    JobState,
    allowed_next,
    check_transition,
    is_terminal,
)

__all__ = [
    "Effect",
    "IllegalTransition",
    "JobBook",
    "JobBookError",
    "JobKey",
    "JobKind",
    "JobRecord",
    "JobState",
    "PendingEffect",
    "TransitionRecord",
    "allowed_next",
    "check_transition",
    "is_terminal",
]
