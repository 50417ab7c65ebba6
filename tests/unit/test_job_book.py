"""The job book on real SQLite files: transitions, pending effects across crashes, replays."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir_tui.engine.jobs import (
    Effect,
    IllegalTransition,
    JobBook,
    JobBookError,
    JobKey,
    JobKind,
    JobRecord,
    JobState,
)
from fabstir_tui.engine.jobs.states import INITIAL_STATE, TRANSITIONS, allowed_next
from fabstir_tui.engine.store import MIGRATIONS, Store

S = JobState
MARKET = "0x00000000000000000000000000000000000000AA"
TX = "0x" + "ab" * 32


def key(job_id: int = 1, kind: JobKind = JobKind.OPEN) -> JobKey:
    return JobKey(kind, 31337, MARKET, str(job_id))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "node.sqlite3"


@pytest.fixture
def book(db_path: Path) -> Iterator[JobBook]:
    store = Store(db_path)
    yield JobBook(store)
    store.close()


def path_to(kind: JobKind, target: JobState) -> list[JobState]:
    """The shortest allowed walk from the kind's initial state to target (excluding start)."""
    start = INITIAL_STATE[kind]
    parents: dict[JobState, JobState | None] = {start: None}
    todo = deque([start])
    while todo:
        state = todo.popleft()
        for nxt in allowed_next(kind, state):
            if nxt not in parents:
                parents[nxt] = state
                todo.append(nxt)
    walk: list[JobState] = []
    node: JobState | None = target
    while node is not None and node != start:
        walk.append(node)
        node = parents[node]
    return list(reversed(walk))


def bring_to(book: JobBook, k: JobKey, state: JobState) -> None:
    book.upsert_seen(k, model_id="m1", client="0xc1", max_tokens=64, price="5", deadline=10**10)
    for step in path_to(k.kind, state):
        book.transition(k, step)


def count(db_path: Path, sql: str) -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute(sql).fetchone()[0])


ALLOWED = [
    (kind, a, b) for kind, table in TRANSITIONS.items() for a, bs in table.items() for b in bs
]


@pytest.mark.parametrize(("kind", "src", "dst"), ALLOWED)
def test_every_allowed_transition_is_written(
    book: JobBook, kind: JobKind, src: JobState, dst: JobState
) -> None:
    k = key(kind=kind)
    bring_to(book, k, src)
    record = book.transition(k, dst, tokens_used=12)
    assert record.state is dst and record.tokens_used == 12
    got = book.get(k)
    assert got is not None and got.state is dst
    assert [(h.from_state, h.to_state) for h in book.history(k)][-1] == (src, dst)


@pytest.mark.parametrize(
    ("kind", "src"), [(kind, src) for kind, table in TRANSITIONS.items() for src in table]
)
def test_every_other_transition_is_refused_and_changes_nothing(
    book: JobBook, db_path: Path, kind: JobKind, src: JobState
) -> None:
    k = key(kind=kind)
    bring_to(book, k, src)
    before = count(db_path, "SELECT COUNT(*) FROM job_transitions")
    for dst in JobState:
        if dst in allowed_next(kind, src):
            continue
        with pytest.raises(IllegalTransition, match=f"from {src} to {dst}"):
            book.transition(k, dst, effect=Effect("claim tx"), output_hash="0xff")
    got = book.get(k)
    assert got is not None and got.state is src and got.output_hash is None
    assert count(db_path, "SELECT COUNT(*) FROM job_transitions") == before
    assert book.pending_effects() == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(JobKind)), st.sampled_from(list(JobState)))))
def test_random_walk_matches_the_table(steps: list[tuple[JobKind, JobState]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "walk.sqlite3")
        book = JobBook(store)
        walked = {kind: [INITIAL_STATE[kind]] for kind in JobKind}
        for kind in JobKind:
            book.upsert_seen(key(kind=kind))
        for kind, target in steps:
            k = key(kind=kind)
            if target in allowed_next(kind, walked[kind][-1]):
                book.transition(k, target)
                walked[kind].append(target)
            else:
                with pytest.raises(IllegalTransition):
                    book.transition(k, target)
        store.close()
        book = JobBook(store := Store(Path(tmp) / "walk.sqlite3"))
        for kind in JobKind:
            got = book.get(key(kind=kind))
            assert got is not None and got.state is walked[kind][-1]
            assert [h.to_state for h in book.history(key(kind=kind))] == walked[kind]
        store.close()


def test_transition_and_pending_effect_survive_reopen(db_path: Path) -> None:
    store = Store(db_path)
    book = JobBook(store)
    k = key(5)
    bring_to(book, k, S.APPROVED)
    book.transition(k, S.CLAIMED, effect=Effect("claim tx", tx_hash=TX, detail={"nonce": 3}))
    store.close()

    store = Store(db_path)
    book = JobBook(store)
    got = book.get(k)
    assert got is not None and got.state is S.CLAIMED and got.tx_hashes == {"claim tx": TX}
    [pending] = book.pending_effects()
    assert pending.key == k and pending.state is S.CLAIMED
    assert pending.effect == Effect("claim tx", tx_hash=TX, detail={"nonce": 3})
    book.effect_done(k, {"status": "confirmed", "block": 12})
    assert book.pending_effects() == []
    book.transition(k, S.RUNNING)
    last_claim = next(h for h in book.history(k) if h.to_state is S.CLAIMED)
    assert last_claim.effect_status == "done"
    assert last_claim.effect_result == {"status": "confirmed", "block": 12}
    store.close()


def test_sigkill_before_the_effect_leaves_it_pending_with_its_tx_hash(db_path: Path) -> None:
    """A real process dies right after the write, before the effect is done."""
    child = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from fabstir_tui.engine.jobs import Effect, JobBook, JobKey, JobKind, JobState
        from fabstir_tui.engine.store import Store
        book = JobBook(Store(Path({str(db_path)!r})))
        k = JobKey(JobKind.OPEN, 31337, {MARKET!r}, "9")
        book.upsert_seen(k, model_id="m1")
        book.transition(k, JobState.APPROVED)
        book.transition(k, JobState.CLAIMED, effect=Effect("claim tx"))
        book.attach_tx(k, {TX!r})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    store = Store(db_path)
    book = JobBook(store)
    k = key(9)
    [pending] = book.pending_effects()
    assert pending.key == k and pending.effect.action == "claim tx"
    assert pending.effect.tx_hash == TX  # re-check this tx in the journal: never claim twice
    with pytest.raises(JobBookError, match="claim tx .* is pending"):
        book.transition(k, S.RUNNING)
    book.effect_done(k, {"status": "reverted", "reason": "already claimed"})
    assert book.transition(k, S.LOST).state is S.LOST
    store.close()


def test_replayed_upserts_neither_duplicate_nor_regress(book: JobBook, db_path: Path) -> None:
    k = key(3)
    assert book.upsert_seen(k, model_id="m1", price="5")
    assert not book.upsert_seen(k, model_id="m1", price="5")
    book.transition(k, S.APPROVED)
    book.transition(k, S.CLAIMED, prompt_hash="0x01")
    # A replay after a restart: same log again, plus a field we had not seen.
    assert not book.upsert_seen(k, model_id="other", price="9", client="0xc1", prompt_hash="0x02")
    got = book.get(k)
    assert got is not None and got.state is S.CLAIMED
    assert (got.model_id, got.price, got.client, got.prompt_hash) == ("m1", "5", "0xc1", "0x01")
    assert count(db_path, "SELECT COUNT(*) FROM jobs") == 1
    assert [h.to_state for h in book.history(k)] == [S.SEEN, S.APPROVED, S.CLAIMED]


def test_key_normalises_contract_and_id(book: JobBook) -> None:
    book.upsert_seen(JobKey(JobKind.OPEN, 1, MARKET.upper().replace("0X", "0x"), "007"))
    assert book.get(JobKey(JobKind.OPEN, 1, MARKET.lower(), "7")) is not None
    assert book.get(JobKey(JobKind.SESSION, 1, MARKET, "7")) is None


def test_terminal_state_refuses_everything(book: JobBook) -> None:
    k = key(4)
    bring_to(book, k, S.RELEASED)
    for dst in JobState:
        with pytest.raises(IllegalTransition, match="released is terminal|not a job state"):
            book.transition(k, dst)


def test_effect_bookkeeping_errors(book: JobBook) -> None:
    k = key(6)
    with pytest.raises(JobBookError, match="unknown job"):
        book.transition(k, S.APPROVED)
    book.upsert_seen(k)
    with pytest.raises(JobBookError, match="no pending effect"):
        book.effect_done(k)
    with pytest.raises(JobBookError, match="unknown job field 'colour'"):
        book.transition(k, S.APPROVED, colour="red")
    with pytest.raises(JobBookError, match="max_tokens must be int"):
        book.upsert_seen(k, max_tokens="64")
    book.transition(k, S.APPROVED)
    book.transition(k, S.CLAIMED, effect=Effect("claim tx"))
    assert book.pending_effects()[0].effect.tx_hash is None  # signed later: attach_tx
    book.effect_done(k, {"tx_hash": TX, "status": "confirmed"})
    got = book.get(k)
    assert got is not None and got.tx_hashes == {"claim tx": TX}


def test_market_queue_and_state_queries(book: JobBook) -> None:
    book.upsert_seen(key(1), model_id="m1", deadline=100)
    book.upsert_seen(key(2), model_id="m2", deadline=100)
    book.upsert_seen(key(3), model_id="m1", deadline=50)
    bring_to(book, key(4), S.RUNNING)
    bring_to(book, key(5), S.LOST)
    bring_to(book, key(6, JobKind.SESSION), S.ACTIVE)
    book.upsert_seen(key(7, JobKind.SESSION))
    bring_to(book, key(8, JobKind.SESSION), S.COMPLETED)

    def ids(records: list[JobRecord]) -> list[tuple[str, str]]:
        return [(r.key.kind.value, r.key.job_id) for r in records]

    assert ids(book.market()) == [("job", "1"), ("job", "2"), ("job", "3")]
    assert ids(book.market(models={"m1"}, now=60)) == [("job", "1")]
    assert ids(book.queue()) == [("job", "4"), ("session", "6"), ("session", "7")]
    assert ids(book.by_state(JobKind.OPEN, {S.LOST})) == [("job", "5")]
    assert book.by_state(JobKind.OPEN, set()) == []


def test_m5_upgrades_a_version_4_database_and_keeps_its_rows(db_path: Path) -> None:
    old = Store(db_path, migrations=MIGRATIONS[:4])
    old.append_audit(1.0, "start", "v4 node", "ok")
    old.close()
    store = Store(db_path)
    assert store.schema_version == len(MIGRATIONS)
    assert [a[1] for a in store.recent_audit()] == ["start"]
    JobBook(store).upsert_seen(key(1))
    store.close()


def test_m6_adds_detail_to_jobs_a_version_5_database_already_holds(db_path: Path) -> None:
    old = Store(db_path, migrations=MIGRATIONS[:5])
    old.close()
    with sqlite3.connect(db_path) as db:  # a row as a version-5 node wrote it
        db.execute(
            """INSERT INTO jobs (kind, chain_id, contract, job_id, state, model_id, created_at,
                 updated_at) VALUES (?, ?, ?, ?, 'seen', ?, 1.0, 1.0)""",
            (*key(1).params, "0x" + "ab" * 32),
        )
    store = Store(db_path)
    book = JobBook(store)
    record = book.get(key(1))
    assert record is not None and record.detail is None and record.model_id == "0x" + "ab" * 32
    book.note(key(1), detail="waiting for the operator")
    again = book.get(key(1))
    assert again is not None and again.detail == "waiting for the operator"
    store.close()


def test_schema_allows_one_pending_effect_per_job(db_path: Path) -> None:
    """The book refuses a second pending effect; the schema refuses it too, as a last guard."""
    Store(db_path).close()
    row = ("job", 1, "0xaa", "1", "claim tx", "{}", "pending", 0.0)
    sql = """INSERT INTO job_effects (kind, chain_id, contract, job_id, action, detail, status,
               created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
    with sqlite3.connect(db_path) as db:
        db.execute(sql, row)
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(sql, row)
        db.execute(sql, (*row[:6], "done", 0.0))
