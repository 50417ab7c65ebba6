"""Blob store: real files in tmp_path; content addressing, atomic writes, corruption, ENOSPC."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from fabstir_tui.engine.proofs.blobs import BlobCorrupted, BlobError, BlobStore, BlobStoreFull


def test_put_get_has_round_trip(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b'{"receipt": 1}'
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.has(digest)
    assert store.get(digest) == data
    path = store.path_for(digest)
    assert path == tmp_path / "blobs" / digest[:2] / digest
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    empty = store.put(b"")
    assert store.get(empty) == b""
    assert not store.has(hashlib.sha256(b"other").hexdigest())


def test_put_is_idempotent_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    first = store.put(b"same bytes")
    mtime = store.path_for(first).stat().st_mtime_ns
    assert store.put(b"same bytes") == first
    assert store.path_for(first).stat().st_mtime_ns == mtime
    big = os.urandom(3 * (1 << 20) + 17)
    assert store.get(store.put(big)) == big
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [first, hashlib.sha256(big).hexdigest()]
    )


def test_corruption_is_reported_naming_the_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"honest receipt")
    path = store.path_for(digest)
    path.write_bytes(b"altered receipt")
    with pytest.raises(BlobCorrupted, match=str(path)):
        store.get(digest)
    # Putting the good bytes again repairs the damaged copy.
    assert store.put(b"honest receipt") == digest
    assert store.get(digest) == b"honest receipt"


def test_missing_and_malformed_names_are_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    absent = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(BlobError, match="no blob"):
        store.get(absent)
    for bad in ("../etc/passwd", absent.upper(), absent[:-1], ""):
        with pytest.raises(BlobError, match="not a blob name"):
            store.has(bad)


def test_full_disk_is_a_clear_error_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OS's write is made to fail with ENOSPC after half the blob reached the file."""
    store = BlobStore(tmp_path)
    payload = b"MARKER" + b"x" * 4096
    real_write = os.write

    def write_until_full(fd: int, data: bytes | memoryview) -> int:
        if bytes(data[:6]) == b"MARKER":
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_until_full)
    with pytest.raises(BlobStoreFull, match="disk full"):
        store.put(payload)
    monkeypatch.undo()
    digest = hashlib.sha256(payload).hexdigest()
    assert not store.has(digest)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert store.get(store.put(payload)) == payload
