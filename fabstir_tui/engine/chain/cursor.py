"""The follower's tables (chain_cursors, chain_blocks, chain_logs): all of their SQL lives here."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fabstir_tui.engine.chain.logs import DecodedLog
from fabstir_tui.engine.store import Store


def hex_int(value: Any) -> int:
    """JSON-RPC quantities are hex strings; web3's formatted values are already ints."""
    return int(value, 16) if isinstance(value, str) else int(value)


def hex_str(value: Any) -> str:
    """Hashes as lower-case 0x-hex, whether they came as strings or as HexBytes."""
    return value.lower() if isinstance(value, str) else "0x" + bytes(value).hex()


@dataclass(frozen=True, slots=True)
class Cursor:
    """The newest applied block; `hash` is empty before the first block is applied."""

    number: int
    hash: str


@dataclass(frozen=True, slots=True)
class Header:
    """The fields of a block header the follower needs."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int
    logs_bloom: str = ""

    @classmethod
    def from_rpc(cls, raw: Mapping[str, Any]) -> Header:
        """From raw JSON-RPC (hex strings) or web3's formatted header (ints and HexBytes)."""
        return cls(
            hex_int(raw["number"]),
            hex_str(raw["hash"]),
            hex_str(raw["parentHash"]),
            hex_int(raw["timestamp"]),
            hex_str(raw.get("logsBloom") or ""),
        )


class FollowerTables:
    """One follower's rows: its cursor, recent block hashes and the logs it has applied."""

    def __init__(self, store: Store, name: str, keep_blocks: int) -> None:
        self.store = store
        self.name = name
        self.keep_blocks = keep_blocks

    def load_cursor(self, start_block: int) -> Cursor:
        """The persisted cursor, or the block before start_block when there is none."""
        rows = self.store.query(
            "SELECT block_number, block_hash FROM chain_cursors WHERE name=?", (self.name,)
        )
        if rows:
            number, block_hash = rows[0]
            return Cursor(int(str(number)), str(block_hash))
        return Cursor(start_block - 1, "")

    def save_cursor(self, db: sqlite3.Connection, cursor: Cursor) -> None:
        db.execute(
            """INSERT INTO chain_cursors (name, block_number, block_hash, updated_at)
               VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET
               block_number=excluded.block_number, block_hash=excluded.block_hash,
               updated_at=excluded.updated_at""",
            (self.name, cursor.number, cursor.hash, time.time()),
        )

    def mark_applied(self, db: sqlite3.Connection, item: DecodedLog) -> bool:
        """Record a log as applied; False when it already was (then it must not be applied)."""
        inserted = db.execute(
            """INSERT OR IGNORE INTO chain_logs (follower, tx_hash, log_index, block_number,
                 block_hash, block_time, address, contract, event, args, applied_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                self.name,
                item.tx_hash,
                item.log_index,
                item.block_number,
                item.block_hash,
                item.block_time,
                item.address,
                item.contract,
                item.event,
                json.dumps(item.args, default=str),
                time.time(),
            ),
        )
        return inserted.rowcount > 0

    def record_blocks(
        self, db: sqlite3.Connection, blocks: Iterable[tuple[int, str, str]], cursor: Cursor
    ) -> None:
        """Remember (number, hash, parent hash) of applied blocks, move the cursor, prune."""
        db.executemany(
            """INSERT INTO chain_blocks (follower, number, hash, parent_hash)
               VALUES (?, ?, ?, ?) ON CONFLICT(follower, number) DO UPDATE
               SET hash=excluded.hash, parent_hash=excluded.parent_hash""",
            [(self.name, n, h, p) for n, h, p in blocks],
        )
        self.save_cursor(db, cursor)
        db.execute(
            "DELETE FROM chain_blocks WHERE follower=? AND number <= ?",
            (self.name, cursor.number - self.keep_blocks),
        )

    def recorded_blocks(self, up_to: int) -> list[tuple[int, str]]:
        """Recorded block hashes at or below `up_to`, newest first, to find a fork point."""
        rows = self.store.query(
            "SELECT number, hash FROM chain_blocks WHERE follower=? AND number <= ? "
            "ORDER BY number DESC",
            (self.name, up_to),
        )
        return [(int(str(n)), str(h)) for n, h in rows]

    def roll_back(self, db: sqlite3.Connection, fork: Cursor) -> None:
        """Forget logs and blocks above the fork point and put the cursor there."""
        db.execute(
            "DELETE FROM chain_logs WHERE follower=? AND block_number > ?", (self.name, fork.number)
        )
        db.execute(
            "DELETE FROM chain_blocks WHERE follower=? AND number > ?", (self.name, fork.number)
        )
        self.save_cursor(db, fork)

    def applied_logs(self) -> list[tuple[str, int]]:
        """(tx hash, log index) of every applied log, in chain order: for checks and tools."""
        rows = self.store.query(
            "SELECT tx_hash, log_index FROM chain_logs WHERE follower=? "
            "ORDER BY block_number, log_index",
            (self.name,),
        )
        return [(str(tx), int(str(i))) for tx, i in rows]
