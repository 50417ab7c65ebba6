"""JobBook: jobs and sessions in SQLite, each transition written before its side effect is sent.

A transition, the side effect it intends (a claim, submit, release or unclaim tx) marked
*pending*, and its log row are one SQLite transaction. The caller then does the effect and
calls effect_done. After a crash, pending_effects() lists what must be re-checked (by its tx
hash in the tx journal when known) instead of sent again: nothing is claimed or submitted twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping

from fabstir_tui.engine.jobs.records import (
    JOB_COLUMNS,
    JOB_FIELDS,
    KEY_WHERE,
    Effect,
    FieldValue,
    JobBookError,
    JobKey,
    JobRecord,
    PendingEffect,
    TransitionRecord,
    check_fields,
    effect_from_row,
    record_from_row,
)
from fabstir_tui.engine.jobs.states import (
    INITIAL_STATE,
    MARKET_STATES,
    QUEUE_STATES,
    JobKind,
    JobState,
    check_transition,
)
from fabstir_tui.engine.store import Store


class JobBook:
    """The pipeline's durable memory of every job and session it has seen."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    # --- writes ---------------------------------------------------------------------------

    def upsert_seen(self, key: JobKey, **fields: FieldValue) -> bool:
        """Record a newly seen job in its kind's initial state; True if it was new.

        Idempotent for replayed logs: an existing row keeps its state and only gains
        fields it did not have yet, so a replay never regresses or duplicates a job."""
        check_fields(fields)
        now = self._clock()
        initial = INITIAL_STATE[key.kind]
        with self._store.transaction() as db:
            row = db.execute(f"SELECT state FROM jobs WHERE {KEY_WHERE}", key.params).fetchone()
            if row is None:
                values = [fields.get(name) for name in JOB_FIELDS]
                marks = ", ".join("?" * (5 + len(JOB_FIELDS)))
                db.execute(
                    f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({marks}, '{{}}', ?, ?)",
                    (*key.params, initial.value, *values, now, now),
                )
                self._log(db, key, None, initial, None, now)
                return True
            present = {name: value for name, value in fields.items() if value is not None}
            if present:
                sets = ", ".join(f"{name}=COALESCE({name}, ?)" for name in present)
                db.execute(
                    f"UPDATE jobs SET {sets} WHERE {KEY_WHERE}",
                    (*present.values(), *key.params),
                )
            return False

    def transition(
        self,
        key: JobKey,
        to: JobState,
        *,
        effect: Effect | None = None,
        **fields: FieldValue,
    ) -> JobRecord:
        """Move a job to `to`, writing its fields, its effect as pending and the log row in one
        SQLite transaction — before the caller sends the effect. Refused while an earlier
        effect of this job is still pending: it must be resolved first (effect_done)."""
        check_fields(fields)
        now = self._clock()
        with self._store.transaction() as db:
            row = db.execute(
                f"SELECT state, tx_hashes FROM jobs WHERE {KEY_WHERE}", key.params
            ).fetchone()
            if row is None:
                raise JobBookError(f"{key}: unknown job, cannot go to {to}")
            current = JobState(str(row[0]))
            check_transition(key.kind, f"#{key.job_id}", current, to)
            pending = db.execute(
                f"SELECT action, tx_hash FROM job_effects WHERE {KEY_WHERE} AND status='pending'",
                key.params,
            ).fetchone()
            if pending is not None:
                raise JobBookError(
                    f"{key}: cannot go from {current} to {to} while its {pending[0]} "
                    f"(tx {pending[1] or 'not yet signed'}) is pending; resolve it first"
                )
            effect_id: int | None = None
            tx_hashes: dict[str, str] = json.loads(str(row[1]))
            if effect is not None:
                cursor = db.execute(
                    """INSERT INTO job_effects (kind, chain_id, contract, job_id, action, detail,
                         tx_hash, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)""",
                    (
                        *key.params,
                        effect.action,
                        json.dumps(dict(effect.detail), sort_keys=True),
                        effect.tx_hash,
                        now,
                    ),
                )
                effect_id = cursor.lastrowid
                if effect.tx_hash is not None:
                    tx_hashes[effect.action] = effect.tx_hash
            sets = "".join(f", {name}=?" for name in fields)
            db.execute(
                f"UPDATE jobs SET state=?, tx_hashes=?, updated_at=?{sets} WHERE {KEY_WHERE}",
                (
                    to.value,
                    json.dumps(tx_hashes, sort_keys=True),
                    now,
                    *fields.values(),
                    *key.params,
                ),
            )
            self._log(db, key, current, to, effect_id, now)
            record = db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE {KEY_WHERE}", key.params
            ).fetchone()
        return record_from_row(tuple(record))

    def attach_tx(self, key: JobKey, tx_hash: str) -> None:
        """Record the hash of the signed tx of the pending effect (journal it, then send)."""
        with self._store.transaction() as db:
            action = self._pending_action(db, key)
            db.execute(
                f"UPDATE job_effects SET tx_hash=? WHERE {KEY_WHERE} AND status='pending'",
                (tx_hash, *key.params),
            )
            self._remember_tx(db, key, action, tx_hash)

    def note(self, key: JobKey, **fields: FieldValue) -> None:
        """Set fields without a transition (why a job waits, what a run measured)."""
        check_fields(fields)
        if not fields:
            return
        sets = ", ".join(f"{name}=?" for name in fields)
        with self._store.transaction() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {sets}, updated_at=? WHERE {KEY_WHERE}",
                (*fields.values(), self._clock(), *key.params),
            )
            if cursor.rowcount == 0:
                raise JobBookError(f"{key}: unknown job")

    def begin_effect(self, key: JobKey, effect: Effect) -> None:
        """Write an effect as pending without moving the job (a release waits in submitted:
        the chain, not our tx, decides whether it ends released or challenged)."""
        now = self._clock()
        with self._store.transaction() as db:
            if db.execute(f"SELECT 1 FROM jobs WHERE {KEY_WHERE}", key.params).fetchone() is None:
                raise JobBookError(f"{key}: unknown job, cannot begin {effect.action}")
            pending = db.execute(
                f"SELECT action FROM job_effects WHERE {KEY_WHERE} AND status='pending'",
                key.params,
            ).fetchone()
            if pending is not None:
                raise JobBookError(f"{key}: its {pending[0]} is still pending")
            db.execute(
                """INSERT INTO job_effects (kind, chain_id, contract, job_id, action, detail,
                     tx_hash, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)""",
                (
                    *key.params,
                    effect.action,
                    json.dumps(dict(effect.detail), sort_keys=True),
                    effect.tx_hash,
                    now,
                ),
            )

    def forget_tx(self, key: JobKey) -> None:
        """The pending effect's tx was dropped (never mined): clear its hash so it is sent
        again; the effect itself stays pending."""
        with self._store.transaction() as db:
            self._pending_action(db, key)
            db.execute(
                f"UPDATE job_effects SET tx_hash=NULL WHERE {KEY_WHERE} AND status='pending'",
                key.params,
            )

    def effect_done(self, key: JobKey, result: Mapping[str, object] | None = None) -> None:
        """Mark the job's pending effect as done (confirmed, reverted: say so in result)."""
        result_doc = dict(result or {})
        with self._store.transaction() as db:
            action = self._pending_action(db, key)
            tx_hash = result_doc.get("tx_hash")
            db.execute(
                f"""UPDATE job_effects SET status='done', result=?, done_at=?,
                      tx_hash=COALESCE(?, tx_hash)
                    WHERE {KEY_WHERE} AND status='pending'""",
                (
                    json.dumps(result_doc, sort_keys=True),
                    self._clock(),
                    None if tx_hash is None else str(tx_hash),
                    *key.params,
                ),
            )
            if tx_hash is not None:
                self._remember_tx(db, key, action, str(tx_hash))

    def _pending_action(self, db: sqlite3.Connection, key: JobKey) -> str:
        row = db.execute(
            f"SELECT action FROM job_effects WHERE {KEY_WHERE} AND status='pending'",
            key.params,
        ).fetchone()
        if row is None:
            raise JobBookError(f"{key}: no pending effect")
        return str(row[0])

    def _remember_tx(self, db: sqlite3.Connection, key: JobKey, action: str, tx: str) -> None:
        row = db.execute(f"SELECT tx_hashes FROM jobs WHERE {KEY_WHERE}", key.params).fetchone()
        tx_hashes: dict[str, str] = json.loads(str(row[0]))
        tx_hashes[action] = tx
        db.execute(
            f"UPDATE jobs SET tx_hashes=? WHERE {KEY_WHERE}",
            (json.dumps(tx_hashes, sort_keys=True), *key.params),
        )

    def _log(
        self,
        db: sqlite3.Connection,
        key: JobKey,
        from_state: JobState | None,
        to_state: JobState,
        effect_id: int | None,
        now: float,
    ) -> None:
        db.execute(
            """INSERT INTO job_transitions (kind, chain_id, contract, job_id, from_state,
                 to_state, effect_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                *key.params,
                None if from_state is None else from_state.value,
                to_state.value,
                effect_id,
                now,
            ),
        )

    # --- reads ----------------------------------------------------------------------------

    def get(self, key: JobKey) -> JobRecord | None:
        rows = self._store.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {KEY_WHERE}", key.params)
        return record_from_row(rows[0]) if rows else None

    def pending_keys(self) -> set[JobKey]:
        """Jobs with an effect in flight (keys only: the per-round checks need no details)."""
        rows = self._store.query(
            "SELECT kind, chain_id, contract, job_id FROM job_effects WHERE status='pending'"
        )
        return {JobKey(JobKind(str(r[0])), int(str(r[1])), str(r[2]), str(r[3])) for r in rows}

    def has_pending(self, key: JobKey) -> bool:
        """Whether this one job has an effect in flight (a request's admission asks this)."""
        rows = self._store.query(
            f"SELECT 1 FROM job_effects WHERE {KEY_WHERE} AND status='pending'", key.params
        )
        return bool(rows)

    def pending_effects(self) -> list[PendingEffect]:
        """What a restarted node must re-check or resend, oldest first."""
        rows = self._store.query(
            """SELECT e.id, e.kind, e.chain_id, e.contract, e.job_id, j.state, e.action,
                 e.detail, e.tx_hash, e.created_at
               FROM job_effects e JOIN jobs j USING (kind, chain_id, contract, job_id)
               WHERE e.status='pending' ORDER BY e.id"""
        )
        return [
            PendingEffect(
                effect_id=int(str(r[0])),
                key=JobKey(JobKind(str(r[1])), int(str(r[2])), str(r[3]), str(r[4])),
                state=JobState(str(r[5])),
                effect=effect_from_row(r[6], r[7], r[8]),
                created_at=float(str(r[9])),
            )
            for r in rows
        ]

    def by_state(self, kind: JobKind, states: Collection[JobState]) -> list[JobRecord]:
        """Jobs of one kind in any of these states, oldest first."""
        if not states:
            return []
        marks = ", ".join("?" * len(states))
        rows = self._store.query(
            f"""SELECT {JOB_COLUMNS} FROM jobs WHERE kind=? AND state IN ({marks})
                ORDER BY created_at, job_id""",
            (kind.value, *(s.value for s in states)),
        )
        return [record_from_row(r) for r in rows]

    def market(
        self, models: Collection[str] | None = None, now: int | None = None
    ) -> list[JobRecord]:
        """Open jobs we have not taken: for models we serve, and not past deadline at `now`."""
        jobs = self.by_state(JobKind.OPEN, MARKET_STATES)
        if models is not None:
            jobs = [job for job in jobs if job.model_id in models]
        if now is not None:
            jobs = [job for job in jobs if job.deadline is None or job.deadline > now]
        return jobs

    def queue(self) -> list[JobRecord]:
        """Our unfinished work: open jobs we took and sessions addressed to us."""
        return self.by_state(JobKind.OPEN, QUEUE_STATES[JobKind.OPEN]) + self.by_state(
            JobKind.SESSION, QUEUE_STATES[JobKind.SESSION]
        )

    def history(self, key: JobKey) -> list[TransitionRecord]:
        """Every state the job went through, with the effect each step intended."""
        rows = self._store.query(
            """SELECT t.from_state, t.to_state, t.at, e.action, e.detail, e.tx_hash, e.status,
                 e.result
               FROM job_transitions t LEFT JOIN job_effects e ON e.id = t.effect_id
               WHERE t.kind=? AND t.chain_id=? AND t.contract=? AND t.job_id=?
               ORDER BY t.id""",
            key.params,
        )
        return [
            TransitionRecord(
                from_state=None if r[0] is None else JobState(str(r[0])),
                to_state=JobState(str(r[1])),
                at=float(str(r[2])),
                effect=None if r[3] is None else effect_from_row(r[3], r[4], r[5]),
                effect_status=None if r[6] is None else str(r[6]),
                effect_result=None if r[7] is None else json.loads(str(r[7])),
            )
            for r in rows
        ]
