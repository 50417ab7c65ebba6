"""The transaction journal (table tx_journal): every signed transaction is written here before
it is broadcast, so a restart can confirm or rebroadcast it (DESIGN §11.12)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

from fabstir_tui.engine.chain.events import TxStatus
from fabstir_tui.engine.store import Store

_COLUMNS = (
    "hash, chain_id, sender, nonce, to_addr, label, value, raw_tx, gas_limit, max_fee, "
    "priority_fee, status, replaces, replaced_by, broadcast_at, block_number, gas_used, "
    "effective_gas_price, l1_fee, error, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journaled transaction; amounts are ints here and decimal TEXT in SQLite."""

    hash: str
    chain_id: int
    sender: str
    nonce: int
    to: str | None
    label: str
    value_wei: int
    raw_tx: str
    gas_limit: int
    max_fee_per_gas_wei: int
    priority_fee_wei: int
    status: TxStatus
    replaces: str | None = None
    replaced_by: str | None = None
    broadcast_at: float | None = None
    block_number: int | None = None
    gas_used: int | None = None
    effective_gas_price_wei: int | None = None
    l1_fee_wei: int | None = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def fee_wei(self) -> int:
        """What the sender paid: L2 execution plus the L1 data fee where known."""
        l2 = (self.gas_used or 0) * (self.effective_gas_price_wei or 0)
        return l2 + (self.l1_fee_wei or 0)


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(str(value))


def _entry(row: tuple[object, ...]) -> JournalEntry:
    """A row in _COLUMNS order to an entry."""
    return JournalEntry(
        hash=str(row[0]),
        chain_id=int(str(row[1])),
        sender=str(row[2]),
        nonce=int(str(row[3])),
        to=None if row[4] is None else str(row[4]),
        label=str(row[5]),
        value_wei=int(str(row[6])),
        raw_tx=str(row[7]),
        gas_limit=int(str(row[8])),
        max_fee_per_gas_wei=int(str(row[9])),
        priority_fee_wei=int(str(row[10])),
        status=cast(TxStatus, str(row[11])),
        replaces=None if row[12] is None else str(row[12]),
        replaced_by=None if row[13] is None else str(row[13]),
        broadcast_at=None if row[14] is None else float(str(row[14])),
        block_number=_int_or_none(row[15]),
        gas_used=_int_or_none(row[16]),
        effective_gas_price_wei=_int_or_none(row[17]),
        l1_fee_wei=_int_or_none(row[18]),
        error=None if row[19] is None else str(row[19]),
        created_at=float(str(row[20])),
        updated_at=float(str(row[21])),
    )


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


class TxJournal:
    """The SQL for tx_journal, kept beside the code that owns the table."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def insert(self, entry: JournalEntry) -> None:
        """Write a freshly signed transaction; committed (fsync) before anyone broadcasts it."""
        now = time.time()
        with self._store.transaction() as db:
            db.execute(
                f"INSERT INTO tx_journal ({_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.hash,
                    entry.chain_id,
                    entry.sender,
                    entry.nonce,
                    entry.to,
                    entry.label,
                    str(entry.value_wei),
                    entry.raw_tx,
                    entry.gas_limit,
                    str(entry.max_fee_per_gas_wei),
                    str(entry.priority_fee_wei),
                    entry.status,
                    entry.replaces,
                    entry.replaced_by,
                    entry.broadcast_at,
                    entry.block_number,
                    entry.gas_used,
                    _text(entry.effective_gas_price_wei),
                    _text(entry.l1_fee_wei),
                    entry.error,
                    now,
                    now,
                ),
            )

    def get(self, tx_hash: str) -> JournalEntry | None:
        """One transaction by hash (hashes are stored lower-case)."""
        rows = self._store.query(
            f"SELECT {_COLUMNS} FROM tx_journal WHERE hash = ?", (tx_hash.lower(),)
        )
        return _entry(rows[0]) if rows else None

    def pending(self, sender: str, chain_id: int) -> list[JournalEntry]:
        """This account's unsettled transactions on this chain, oldest nonce first."""
        rows = self._store.query(
            f"SELECT {_COLUMNS} FROM tx_journal WHERE sender = ? AND chain_id = ? "
            "AND status = 'pending' ORDER BY nonce, created_at",
            (sender, chain_id),
        )
        return [_entry(r) for r in rows]

    def by_nonce(self, sender: str, chain_id: int, nonce: int) -> list[JournalEntry]:
        """Every transaction that competes for one nonce: an original and its replacements."""
        rows = self._store.query(
            f"SELECT {_COLUMNS} FROM tx_journal WHERE sender = ? AND chain_id = ? AND nonce = ? "
            "ORDER BY created_at",
            (sender, chain_id, nonce),
        )
        return [_entry(r) for r in rows]

    def highest_live_nonce(self, sender: str, chain_id: int) -> int | None:
        """The highest nonce a transaction still holds; dropped ones gave theirs back."""
        rows = self._store.query(
            "SELECT MAX(nonce) FROM tx_journal WHERE sender = ? AND chain_id = ? "
            "AND status != 'dropped'",
            (sender, chain_id),
        )
        value = rows[0][0] if rows else None
        return None if value is None else int(str(value))

    def by_label(self, sender: str, chain_id: int, label: str, since: float) -> list[JournalEntry]:
        """This account's transactions with one label signed at or after `since`, newest
        first: how a restart finds a tx whose hash its caller had not recorded yet."""
        rows = self._store.query(
            f"SELECT {_COLUMNS} FROM tx_journal WHERE sender = ? AND chain_id = ? AND label = ? "
            "AND created_at >= ? ORDER BY created_at DESC",
            (sender, chain_id, label, since),
        )
        return [_entry(r) for r in rows]

    def recent(self, limit: int = 100) -> list[JournalEntry]:
        """The newest transactions, for screens and `status --json`."""
        rows = self._store.query(
            f"SELECT {_COLUMNS} FROM tx_journal ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        return [_entry(r) for r in rows]

    def mark_broadcast(self, tx_hash: str, error: str | None = None) -> None:
        """The node has (or may have) the transaction; `error` notes an uncertain broadcast."""
        now = time.time()
        with self._store.transaction() as db:
            db.execute(
                "UPDATE tx_journal SET broadcast_at = COALESCE(broadcast_at, ?), error = ?, "
                "updated_at = ? WHERE hash = ?",
                (now, error, now, tx_hash),
            )

    def note_error(self, tx_hash: str, error: str) -> None:
        """Record why something went wrong without settling the transaction."""
        with self._store.transaction() as db:
            db.execute(
                "UPDATE tx_journal SET error = ?, updated_at = ? WHERE hash = ?",
                (error, time.time(), tx_hash),
            )

    def settle(
        self,
        tx_hash: str,
        status: TxStatus,
        *,
        block_number: int | None = None,
        gas_used: int | None = None,
        effective_gas_price_wei: int | None = None,
        l1_fee_wei: int | None = None,
        replaced_by: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Move a pending transaction to a final state; False if someone settled it first,
        so two waiters on one transaction publish its outcome once."""
        with self._store.transaction() as db:
            cursor = db.execute(
                "UPDATE tx_journal SET status = ?, block_number = ?, gas_used = ?, "
                "effective_gas_price = ?, l1_fee = ?, replaced_by = ?, error = ?, "
                "updated_at = ? WHERE hash = ? AND status = 'pending'",
                (
                    status,
                    block_number,
                    gas_used,
                    _text(effective_gas_price_wei),
                    _text(l1_fee_wei),
                    replaced_by,
                    error,
                    time.time(),
                    tx_hash,
                ),
            )
            return cursor.rowcount == 1
