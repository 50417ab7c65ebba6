"""Content-addressed blob store: receipts (and other evidence) kept under their SHA-256.

A blob's name is the SHA-256 hex of its bytes, so a reader can always tell whether what it
read is what was written. Writes are atomic (temp file in the same directory, fsync,
rename, then fsync of the directory) and idempotent; files are 0600. A corrupted file is
reported naming it — never returned as data — and a full disk leaves no partial file.
"""

from __future__ import annotations

import errno
import hashlib
import re
from pathlib import Path

from fabstir_tui.engine.durable import write_atomically

_NAME = re.compile(r"[0-9a-f]{64}")


class BlobError(Exception):
    """A blob could not be stored or read."""


class BlobCorrupted(BlobError):
    """A stored file's bytes no longer hash to its name."""


class BlobStoreFull(BlobError):
    """The disk filled up while writing; nothing partial was left behind."""


class BlobStore:
    """Blobs under `root`, sharded by the first two hex digits of their hash."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path_for(self, digest: str) -> Path:
        """Where the blob named `digest` lives (whether or not it exists)."""
        if not _NAME.fullmatch(digest):
            raise BlobError(f"not a blob name (64 lower-case hex digits): {digest[:80]!r}")
        return self.root / digest[:2] / digest

    def has(self, digest: str) -> bool:
        """Whether a blob with this name is stored (its content is checked by `get`)."""
        return self.path_for(digest).is_file()

    def get(self, digest: str) -> bytes:
        """The blob's bytes, verified against its name; BlobCorrupted if they differ."""
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobError(f"no blob {digest} (expected at {path})") from None
        except OSError as exc:
            raise BlobError(f"cannot read blob {path}: {exc}") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise BlobCorrupted(f"blob file {path} is corrupted: its bytes hash to {actual}")
        return data

    def put(self, data: bytes) -> str:
        """Store `data` and return its SHA-256 hex; storing the same bytes twice is a no-op."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if path.is_file():
            try:
                self.get(digest)
                return digest
            except BlobCorrupted:
                pass  # rewrite the damaged copy with the good bytes we hold
        try:
            write_atomically(path, data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise BlobStoreFull(
                    f"disk full writing blob {digest} under {self.root}; nothing was stored"
                ) from exc
            raise BlobError(f"cannot write blob {path}: {exc}") from exc
        return digest
