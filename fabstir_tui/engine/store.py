"""SQLite store (WAL): the node's durable memory. Later issues add tables by migration."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

Migration = Callable[[sqlite3.Connection], None]


def _m1_base(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE model_hashes (
             path TEXT NOT NULL, size_bytes INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
             sha256 TEXT NOT NULL, hashed_at REAL NOT NULL,
             PRIMARY KEY (path, size_bytes, mtime_ns))"""
    )
    db.execute(
        """CREATE TABLE audit (
             id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, action TEXT NOT NULL,
             detail TEXT NOT NULL, outcome TEXT NOT NULL)"""
    )


def _m2_chain(db: sqlite3.Connection) -> None:
    """The chain side: journaled transactions, follower cursors, seen blocks, applied logs and
    the earnings ledger. Amounts are decimal TEXT: uint256 does not fit SQLite's INTEGER."""
    db.execute(
        """CREATE TABLE tx_journal (
             hash TEXT PRIMARY KEY, chain_id INTEGER NOT NULL, sender TEXT NOT NULL,
             nonce INTEGER NOT NULL, to_addr TEXT, label TEXT NOT NULL, value TEXT NOT NULL,
             raw_tx TEXT NOT NULL, gas_limit INTEGER NOT NULL, max_fee TEXT NOT NULL,
             priority_fee TEXT NOT NULL, status TEXT NOT NULL, replaces TEXT, replaced_by TEXT,
             broadcast_at REAL, block_number INTEGER, gas_used INTEGER,
             effective_gas_price TEXT, l1_fee TEXT, error TEXT,
             created_at REAL NOT NULL, updated_at REAL NOT NULL)"""
    )
    db.execute("CREATE INDEX tx_journal_status ON tx_journal (status)")
    db.execute("CREATE INDEX tx_journal_sender_nonce ON tx_journal (sender, chain_id, nonce)")
    db.execute(
        """CREATE TABLE chain_cursors (
             name TEXT PRIMARY KEY, block_number INTEGER NOT NULL, block_hash TEXT NOT NULL,
             updated_at REAL NOT NULL)"""
    )
    # Per follower: hashes of recent applied blocks, to find the fork point after a reorg.
    db.execute(
        """CREATE TABLE chain_blocks (
             follower TEXT NOT NULL, number INTEGER NOT NULL, hash TEXT NOT NULL,
             parent_hash TEXT NOT NULL DEFAULT '', PRIMARY KEY (follower, number))"""
    )
    # Per follower: every applied log, so a log is applied once and a reorg can roll it back.
    db.execute(
        """CREATE TABLE chain_logs (
             follower TEXT NOT NULL, tx_hash TEXT NOT NULL, log_index INTEGER NOT NULL,
             block_number INTEGER NOT NULL, block_hash TEXT NOT NULL, block_time INTEGER NOT NULL,
             address TEXT NOT NULL, contract TEXT NOT NULL, event TEXT NOT NULL,
             args TEXT NOT NULL, applied_at REAL NOT NULL,
             PRIMARY KEY (follower, tx_hash, log_index))"""
    )
    db.execute("CREATE INDEX chain_logs_block ON chain_logs (follower, block_number)")
    db.execute(
        """CREATE TABLE earnings_ledger (
             tx_hash TEXT NOT NULL, log_index INTEGER NOT NULL, block_number INTEGER NOT NULL,
             block_time INTEGER NOT NULL, kind TEXT NOT NULL, token TEXT NOT NULL,
             amount TEXT NOT NULL, job_id TEXT, counterparty TEXT,
             PRIMARY KEY (tx_hash, log_index))"""
    )


def _m3_market(db: sqlite3.Connection) -> None:
    """The marketplace as our events tell it: every posted job, our sessions (ledger.py)."""
    db.execute(
        """CREATE TABLE market_jobs (
             job_id INTEGER PRIMARY KEY, client TEXT NOT NULL, model_id TEXT NOT NULL,
             token TEXT NOT NULL, escrow TEXT NOT NULL, max_tokens INTEGER NOT NULL,
             max_price TEXT NOT NULL, deadline INTEGER NOT NULL, prompt_hash TEXT NOT NULL,
             status TEXT NOT NULL, host TEXT, price TEXT, tokens_used INTEGER,
             submitted_at INTEGER, host_amount TEXT, settled_tx TEXT,
             posted_block INTEGER NOT NULL, updated_block INTEGER NOT NULL)"""
    )
    db.execute("CREATE INDEX market_jobs_host_status ON market_jobs (host, status)")
    db.execute(
        """CREATE TABLE market_sessions (
             session_id INTEGER PRIMARY KEY, client TEXT NOT NULL, host TEXT NOT NULL,
             model_id TEXT NOT NULL, token TEXT NOT NULL, deposit TEXT NOT NULL,
             price TEXT NOT NULL, tokens INTEGER NOT NULL, status TEXT NOT NULL,
             host_amount TEXT, settled_tx TEXT, updated_block INTEGER NOT NULL)"""
    )


def _m4_request_nonces(db: sqlite3.Connection) -> None:
    """Nonces of signed client requests already honoured (request_auth.py), against replay.
    The nonce is decimal TEXT (a uint256); expiry (unix s) lets expired rows be swept."""
    db.execute(
        """CREATE TABLE request_nonces (
             signer TEXT NOT NULL, nonce TEXT NOT NULL, expiry INTEGER NOT NULL,
             PRIMARY KEY (signer, nonce))"""
    )
    db.execute("CREATE INDEX request_nonces_expiry ON request_nonces (expiry)")


def _m5_jobs(db: sqlite3.Connection) -> None:
    """The job pipeline (engine/jobs/book.py): each job's state, its side effects written as
    pending before they are sent, and every transition, so a restart resumes where it stood."""
    db.execute(
        """CREATE TABLE jobs (
             kind TEXT NOT NULL, chain_id INTEGER NOT NULL, contract TEXT NOT NULL,
             job_id TEXT NOT NULL, state TEXT NOT NULL, model_id TEXT, client TEXT,
             max_tokens INTEGER, price TEXT, deadline INTEGER, prompt_hash TEXT,
             output_hash TEXT, receipt_root TEXT, tokens_used INTEGER,
             tx_hashes TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL,
             updated_at REAL NOT NULL, PRIMARY KEY (kind, chain_id, contract, job_id))"""
    )
    db.execute("CREATE INDEX jobs_state ON jobs (kind, state)")
    db.execute(
        """CREATE TABLE job_transitions (
             id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, chain_id INTEGER NOT NULL,
             contract TEXT NOT NULL, job_id TEXT NOT NULL, from_state TEXT,
             to_state TEXT NOT NULL, effect_id INTEGER, at REAL NOT NULL)"""
    )
    db.execute(
        "CREATE INDEX job_transitions_job ON job_transitions (kind, chain_id, contract, job_id)"
    )
    db.execute(
        """CREATE TABLE job_effects (
             id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, chain_id INTEGER NOT NULL,
             contract TEXT NOT NULL, job_id TEXT NOT NULL, action TEXT NOT NULL,
             detail TEXT NOT NULL, tx_hash TEXT, status TEXT NOT NULL, result TEXT,
             created_at REAL NOT NULL, done_at REAL)"""
    )
    # At most one pending effect per job: the book refuses to stack a second one.
    db.execute(
        """CREATE UNIQUE INDEX job_effects_one_pending
             ON job_effects (kind, chain_id, contract, job_id) WHERE status = 'pending'"""
    )


def _m6_job_detail(db: sqlite3.Connection) -> None:
    """Why a job sits where it is (rejected because…, lost to…, waiting for…), for the UI."""
    db.execute("ALTER TABLE jobs ADD COLUMN detail TEXT")


def _m7_settlements(db: sqlite3.Connection) -> None:
    """What a settled job paid: the charge, the marketplace fee and the client's refund, so the
    Earnings screen shows the whole split to the wei (PaymentReleased carries all three)."""
    for column in ("charge", "fee", "refund"):
        db.execute(f"ALTER TABLE market_jobs ADD COLUMN {column} TEXT")


def _m8_sessions(db: sqlite3.Connection) -> None:
    """Sessions as the node serves them: the chain's proof interval, timeout and last activity
    (when a proof last landed), and every receipt served in a session with the proof that
    covered it, so proofs are submitted every N tokens and a restart knows what is unproven."""
    db.execute("ALTER TABLE market_sessions ADD COLUMN proof_interval TEXT")
    db.execute("ALTER TABLE market_sessions ADD COLUMN timeout INTEGER")
    db.execute("ALTER TABLE market_sessions ADD COLUMN last_activity INTEGER")
    db.execute(
        """CREATE TABLE session_receipts (
             chain_id INTEGER NOT NULL, contract TEXT NOT NULL, session_id TEXT NOT NULL,
             seq INTEGER NOT NULL, receipt_hash TEXT NOT NULL, tokens INTEGER NOT NULL,
             proof_tx TEXT, created_at REAL NOT NULL,
             PRIMARY KEY (chain_id, contract, session_id, seq))"""
    )


# Append only: never edit a migration that has shipped; add a new one.
MIGRATIONS: tuple[Migration, ...] = (
    _m1_base,
    _m2_chain,
    _m3_market,
    _m4_request_nonces,
    _m5_jobs,
    _m6_job_detail,
    _m7_settlements,
    _m8_sessions,
)


class StoreError(RuntimeError):
    """The database cannot be opened or is newer than this program."""


class Store:
    """One SQLite file in WAL mode; each write is its own committed transaction."""

    def __init__(self, path: Path, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the data dir {path.parent}: {exc.strerror or exc}; "
                "choose a writable folder with --data-dir or paths.data_dir"
            ) from exc
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the node database {path}: {exc}") from exc
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot open the node database {path}: {exc}") from exc
        try:
            self._migrate(migrations)
        except BaseException:
            self._db.close()
            raise

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self, migrations: tuple[Migration, ...]) -> None:
        current = self.schema_version
        if current > len(migrations):
            raise StoreError(
                f"the node database {self.path} has schema version {current}, newer than this "
                f"program knows ({len(migrations)}); upgrade fabstir-tui or use another data dir"
            )
        for version, migration in enumerate(migrations[current:], start=current + 1):
            try:
                with self.transaction() as db:
                    migration(db)
                    db.execute(f"PRAGMA user_version={version}")
            except Exception as exc:
                raise StoreError(
                    f"cannot upgrade the node database {self.path} to schema version {version} "
                    f"({getattr(migration, '__name__', 'migration')}): {exc}; it was left at "
                    f"version {version - 1}"
                ) from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Serialise writers across threads; commit on success, roll back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Read rows under the store's lock (modules that own a table keep their SQL)."""
        with self._lock:
            return [tuple(row) for row in self._db.execute(sql, params).fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- model hashes ---------------------------------------------------------------------

    def cached_model_hash(self, path: str, size_bytes: int, mtime_ns: int) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM model_hashes WHERE path=? AND size_bytes=? AND mtime_ns=?",
                (path, size_bytes, mtime_ns),
            ).fetchone()
        return str(row[0]) if row else None

    def save_model_hash(self, path: str, size_bytes: int, mtime_ns: int, sha256: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM model_hashes WHERE path=?", (path,))
            db.execute(
                "INSERT INTO model_hashes VALUES (?, ?, ?, ?, ?)",
                (path, size_bytes, mtime_ns, sha256, time.time()),
            )

    # --- audit ----------------------------------------------------------------------------

    def append_audit(self, ts: float, action: str, detail: str, outcome: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO audit (ts, action, detail, outcome) VALUES (?, ?, ?, ?)",
                (ts, action, detail, outcome),
            )

    def recent_audit(self, limit: int = 200) -> list[tuple[float, str, str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, action, detail, outcome FROM audit ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(float(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in reversed(rows)]
