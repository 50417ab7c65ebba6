"""Hostile and random GGUF headers: only GgufError comes out, and nothing big is allocated."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from pathlib import Path

import pytest
from gguf import LlamaFileType
from gguf_factory import write_not_gguf, write_tiny_llama
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabstir_tui.engine.inference.gguf_meta import (
    CorruptGgufError,
    GgufError,
    TruncatedGgufError,
    UnsupportedGgufError,
    read_gguf,
)


def _header(n_tensors: int, kvs: bytes, n_kv: int = 1) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


HOSTILE = [
    pytest.param(_header(1 << 40, b"", 0), CorruptGgufError, id="tensor-count"),
    pytest.param(_header(0, b"", 1 << 40), CorruptGgufError, id="kv-count"),
    pytest.param(_header(0, struct.pack("<Q", 1 << 50)), CorruptGgufError, id="key-length"),
    pytest.param(
        _header(0, _key("k") + struct.pack("<IQ", 8, 1 << 60)), CorruptGgufError, id="str-length"
    ),
    pytest.param(
        _header(0, _key("k") + struct.pack("<IIQ", 9, 8, 1 << 62)),
        CorruptGgufError,
        id="array-length",
    ),
    pytest.param(
        _header(0, _key("k") + struct.pack("<IIQ", 9, 8, 3) + struct.pack("<Q", 1 << 61)),
        CorruptGgufError,
        id="string-in-array",
    ),
    pytest.param(
        _header(0, _key("k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 8),
        CorruptGgufError,
        id="array-nesting",
    ),
    pytest.param(_header(0, _key("k") + struct.pack("<I", 77)), CorruptGgufError, id="value-type"),
    pytest.param(
        _header(0, _key("k") + struct.pack("<IQ", 8, 10_000_000)),
        TruncatedGgufError,
        id="long-string-in-short-file",
    ),
    pytest.param(
        _header(0, _key("tokenizer.chat_template") + struct.pack("<IQ", 8, 10_000_000)),
        TruncatedGgufError,
        id="long-kept-string-in-short-file",
    ),
    pytest.param(
        _header(0, _key("k") + struct.pack("<IIQ", 9, 8, 50_000_000)),
        TruncatedGgufError,
        id="long-array-in-short-file",
    ),
    pytest.param(
        _header(1, b"", 0) + _key("t") + struct.pack("<I", 9),
        CorruptGgufError,
        id="dims",
    ),
    pytest.param(
        _header(1, b"", 0) + _key("t") + struct.pack("<IQQQQ", 4, *(1 << 32,) * 4),
        CorruptGgufError,
        id="elements",
    ),
    pytest.param(
        _header(1, b"", 0) + _key("t") + struct.pack("<IQIQ", 1, 32, 200, 0),
        UnsupportedGgufError,
        id="tensor-type",
    ),
    pytest.param(
        _header(2, b"", 0) + (_key("t") + struct.pack("<IQIQ", 1, 8, 0, 0)) * 2,
        CorruptGgufError,
        id="duplicate-tensor",
    ),
    pytest.param(
        _header(0, (_key("k") + struct.pack("<IB", 0, 1)) * 2, 2),
        CorruptGgufError,
        id="duplicate-key",
    ),
    pytest.param(
        _header(0, _key("general.alignment") + struct.pack("<II", 4, 48)),
        CorruptGgufError,
        id="alignment",
    ),
]


@pytest.mark.parametrize(("content", "error"), HOSTILE)
def test_hostile_lengths_are_refused_without_allocating(
    tmp_path: Path, content: bytes, error: type[GgufError]
) -> None:
    path = write_not_gguf(tmp_path / "hostile.gguf", content)
    tracemalloc.start()
    try:
        with pytest.raises(error) as caught:
            read_gguf(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert str(caught.value).startswith(str(path))


# --- fuzzing: only GgufError, never a big allocation --------------------------------------


def _parse_bounded(path: Path) -> None:
    tracemalloc.start()
    try:
        with contextlib.suppress(GgufError):
            read_gguf(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * path.stat().st_size + (4 << 20)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.binary(max_size=4096), magic=st.booleans())
def test_random_bytes_raise_only_gguf_errors(
    data: bytes, magic: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-random.gguf"
    path.write_bytes((b"GGUF" + data) if magic else data)
    _parse_bounded(path)


INTERESTING = [0, 1, 2, 3, 8, 9, 0xFF, 0xFFFF, 0xFFFFFFFF, 1 << 31, 1 << 63, (1 << 64) - 1]
mutation = st.tuples(
    st.floats(0.0, 1.0, exclude_max=True),
    st.one_of(
        st.integers(0, 255).map(lambda v: bytes([v])),
        st.sampled_from(INTERESTING).map(lambda v: (v & 0xFFFFFFFF).to_bytes(4, "little")),
        st.sampled_from(INTERESTING).map(lambda v: v.to_bytes(8, "little")),
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    mutations=st.lists(mutation, min_size=1, max_size=4), cut=st.none() | st.integers(0, 1 << 20)
)
def test_corrupted_real_headers_raise_only_gguf_errors(
    mutations: list[tuple[float, bytes]],
    cut: int | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    src = tmp_path_factory.getbasetemp() / "fuzz-source.gguf"
    if not src.exists():
        write_tiny_llama(src, file_type=LlamaFileType.MOSTLY_Q4_0)
    raw = bytearray(src.read_bytes())
    header_end = read_gguf(src).data_offset
    for where, value in mutations:
        at = int(where * header_end)
        raw[at : at + len(value)] = value
    path = tmp_path_factory.getbasetemp() / "fuzz-mutated.gguf"
    path.write_bytes(bytes(raw[:cut] if cut is not None else raw))
    _parse_bounded(path)
