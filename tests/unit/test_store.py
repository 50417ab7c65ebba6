"""The SQLite store on real files: migrations, refusal of newer schemas, WAL and crash safety."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir_tui.engine.store import MIGRATIONS, Store, StoreError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "node.sqlite3")
    yield s
    s.close()


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection that sees the file as any other process would."""
    return sqlite3.connect(path)


def tables(path: Path) -> set[str]:
    with raw(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return {str(r[0]) for r in rows if not str(r[0]).startswith("sqlite_")}


def user_version(path: Path) -> int:
    with raw(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_migrations_apply_in_order_and_set_user_version(tmp_path: Path) -> None:
    applied: list[int] = []

    def m1(db: sqlite3.Connection) -> None:
        applied.append(1)
        db.execute("CREATE TABLE a (x INTEGER)")

    def m2(db: sqlite3.Connection) -> None:
        applied.append(2)
        db.execute("ALTER TABLE a ADD COLUMN y TEXT")  # fails unless m1 ran first

    path = tmp_path / "db.sqlite3"
    s = Store(path, migrations=(m1, m2))
    assert s.schema_version == 2
    s.close()
    assert applied == [1, 2]
    assert user_version(path) == 2
    with raw(path) as db:
        cols = [str(r[1]) for r in db.execute("PRAGMA table_info(a)").fetchall()]
    assert cols == ["x", "y"]


def test_reopening_runs_only_new_migrations(tmp_path: Path) -> None:
    applied: list[str] = []

    def m1(db: sqlite3.Connection) -> None:
        applied.append("m1")
        db.execute("CREATE TABLE a (x INTEGER)")

    def m2(db: sqlite3.Connection) -> None:
        applied.append("m2")
        db.execute("CREATE TABLE b (x INTEGER)")

    path = tmp_path / "db.sqlite3"
    Store(path, migrations=(m1,)).close()
    Store(path, migrations=(m1,)).close()
    assert applied == ["m1"]
    s = Store(path, migrations=(m1, m2))
    assert s.schema_version == 2
    s.close()
    Store(path, migrations=(m1, m2)).close()
    assert applied == ["m1", "m2"]
    assert tables(path) == {"a", "b"}


def test_default_schema_has_the_base_tables(store: Store) -> None:
    assert store.schema_version == len(MIGRATIONS)
    assert {"model_hashes", "audit"} <= tables(store.path)


def test_newer_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    Store(path).close()
    newer = len(MIGRATIONS) + 3
    with raw(path) as db:
        db.execute(f"PRAGMA user_version={newer}")
    with pytest.raises(StoreError) as excinfo:
        Store(path)
    msg = str(excinfo.value)
    assert str(path) in msg
    assert f"schema version {newer}" in msg
    assert f"newer than this program knows ({len(MIGRATIONS)})" in msg
    assert "upgrade fabstir-tui" in msg
    assert user_version(path) == newer


def test_failed_migration_rolls_back_and_keeps_the_version(tmp_path: Path) -> None:
    def m1(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE a (x INTEGER)")

    def m2_broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x INTEGER)")
        db.execute("INSERT INTO a VALUES (1)")
        db.execute("CREATE TABLE a (dup INTEGER)")  # already exists: raises mid-migration

    path = tmp_path / "db.sqlite3"
    Store(path, migrations=(m1,)).close()
    with pytest.raises(StoreError) as excinfo:
        Store(path, migrations=(m1, m2_broken))
    msg = str(excinfo.value)
    assert "schema version 2" in msg
    assert "m2_broken" in msg
    assert "left at version 1" in msg
    assert user_version(path) == 1
    assert tables(path) == {"a"}
    with raw(path) as db:
        assert db.execute("SELECT COUNT(*) FROM a").fetchone()[0] == 0
    s = Store(path, migrations=(m1,))  # the old program still opens it
    assert s.schema_version == 1
    s.close()


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open the node database"):
        Store(path)


def test_wal_mode_is_on(store: Store) -> None:
    with raw(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("INSERT INTO audit (ts, action, detail, outcome) VALUES (1, 'a', 'b', 'c')")
        raise RuntimeError("boom")
    assert store.recent_audit() == []
    store.append_audit(2.0, "load", "model.gguf", "ok")
    assert store.recent_audit() == [(2.0, "load", "model.gguf", "ok")]


def test_recent_audit_is_oldest_first_and_limited(store: Store) -> None:
    for i in range(5):
        store.append_audit(float(i), "act", str(i), "ok")
    assert [r[2] for r in store.recent_audit(limit=3)] == ["2", "3", "4"]


def test_model_hash_cache_is_keyed_by_path_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    s = Store(path)
    assert s.cached_model_hash("/m/a.gguf", 100, 5) is None
    s.save_model_hash("/m/a.gguf", 100, 5, "aa" * 32)
    s.save_model_hash("/m/b.gguf", 100, 5, "bb" * 32)
    assert s.cached_model_hash("/m/a.gguf", 100, 5) == "aa" * 32
    assert s.cached_model_hash("/m/a.gguf", 100, 6) is None  # touched file
    assert s.cached_model_hash("/m/a.gguf", 101, 5) is None  # resized file
    assert s.cached_model_hash("/m/c.gguf", 100, 5) is None
    s.save_model_hash("/m/a.gguf", 100, 6, "cc" * 32)
    assert s.cached_model_hash("/m/a.gguf", 100, 6) == "cc" * 32
    assert s.cached_model_hash("/m/a.gguf", 100, 5) is None  # old entry replaced
    s.close()
    s = Store(path)
    assert s.cached_model_hash("/m/a.gguf", 100, 6) == "cc" * 32
    assert s.cached_model_hash("/m/b.gguf", 100, 5) == "bb" * 32
    s.close()
    with raw(path) as db:
        assert db.execute("SELECT COUNT(*) FROM model_hashes").fetchone()[0] == 2


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from fabstir_tui.engine.store import Store

    store = Store(Path(sys.argv[1]))
    i = 0
    while True:
        i += 1
        store.append_audit(float(i), "test", str(i), "ok")
        print(f"committed {i}", flush=True)
    """
)


def test_committed_rows_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    wanted = 200
    reported = 0
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        try:
            for line in child.stdout:
                assert line == f"committed {reported + 1}\n"
                reported += 1
                if reported == wanted:
                    break
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        err = child.stderr.read()
    assert reported == wanted, err
    assert child.returncode == -signal.SIGKILL

    with raw(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ids = [int(r[0]) for r in db.execute("SELECT detail FROM audit ORDER BY id").fetchall()]
    # Every reported commit is there; rows committed after the last report may be too.
    assert ids[:wanted] == list(range(1, wanted + 1))
    assert ids == list(range(1, len(ids) + 1))
    s = Store(path)
    assert s.schema_version == len(MIGRATIONS)
    s.close()
