"""The P2P frame codec: every refusal typed, buffered reads, and no input that crashes or hangs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fabstir_tui.engine.p2p.frames import (
    DEFAULT_CHUNK_BYTES,
    MAX_FRAME_BYTES,
    FrameEncodeError,
    FrameError,
    FrameReader,
    FrameTooLarge,
    MalformedFrame,
    TruncatedFrame,
    decode_body,
    encode_frame,
)

T = TypeVar("T")
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class MemorySource:
    """In-memory byte source that hands out at most the next chunk size per read."""

    def __init__(self, data: bytes, sizes: Sequence[int] = (1 << 30,)) -> None:
        self.data = data
        self.pos = 0
        self.sizes = [max(1, s) for s in sizes] or [1 << 30]
        self.requests: list[int] = []

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    async def read(self, n: int) -> bytes:
        size = self.sizes[len(self.requests) % len(self.sizes)]
        self.requests.append(n)
        chunk = self.data[self.pos : self.pos + min(n, size)]
        self.pos += len(chunk)
        return chunk


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never truly suspends (in-memory source): no loop, no hang."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the reader suspended on an in-memory source")


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def read_all(reader: FrameReader) -> list[dict[str, Any]]:
    out = []
    while (item := run(reader.read_frame())) is not None:
        out.append(item)
    return out


def body_of_size(size: int) -> dict[str, Any]:
    """A dict whose compact JSON is exactly ``size`` bytes (size >= 8)."""
    return {"p": "x" * (size - len('{"p":""}'))}


# -- encode ------------------------------------------------------------------------------------


def test_encode_is_header_plus_compact_utf8_json() -> None:
    data = encode_frame({"a": [1, 2.5, None, True], "é": "ü"})
    body = '{"a":[1,2.5,null,true],"é":"ü"}'.encode()
    assert data == struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("obj", [[1], "s", None, 3, (("a", 1),)])
def test_encode_refuses_non_dict(obj: Any) -> None:
    with pytest.raises(FrameEncodeError, match="JSON object"):
        encode_frame(obj)


@pytest.mark.parametrize(
    "obj",
    [
        {"a": {1, 2}},
        {"a": b"bytes"},
        {"a": object()},
        {"a": float("nan")},
        {"a": [float("inf")]},
        {1: "int key"},
        {"a": {None: 1}},
        {"a": "\ud800"},
        {"a": 10**5000},
    ],
)
def test_encode_refuses_what_json_cannot_carry(obj: Any) -> None:
    with pytest.raises(FrameEncodeError):
        encode_frame(obj)


def test_encode_refuses_circular_and_is_a_value_error() -> None:
    obj: dict[str, Any] = {}
    obj["self"] = obj
    with pytest.raises(ValueError):
        encode_frame(obj)


def test_encode_accepts_tuples_as_arrays() -> None:
    assert decode_body(encode_frame({"a": (1, 2)})[4:]) == {"a": [1, 2]}


def test_encode_cap_exact_and_over() -> None:
    assert len(encode_frame(body_of_size(MAX_FRAME_BYTES))) == MAX_FRAME_BYTES + 4
    with pytest.raises(FrameTooLarge) as err:
        encode_frame(body_of_size(MAX_FRAME_BYTES + 1))
    assert (err.value.length, err.value.cap) == (MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES)
    with pytest.raises(FrameTooLarge):
        encode_frame(body_of_size(100), max_frame_bytes=99)


@pytest.mark.parametrize("cap", [0, 1, -5, 2**32, True, 1.5])
def test_bad_caps_are_refused(cap: Any) -> None:
    with pytest.raises(ValueError, match="cap"):
        encode_frame({}, max_frame_bytes=cap)
    with pytest.raises(ValueError, match="cap"):
        FrameReader(MemorySource(b""), max_frame_bytes=cap)


# -- reader: the happy paths -------------------------------------------------------------------


def test_several_frames_in_one_read_cost_one_read() -> None:
    data = b"".join(encode_frame({"i": i}) for i in range(50))
    source = MemorySource(data)
    reader = FrameReader(source)
    assert read_all(reader) == [{"i": i} for i in range(50)]
    assert len(source.requests) == 2  # one chunk with every frame, one that says EOF


def test_frames_split_across_one_byte_reads_and_requests_stay_large() -> None:
    data = encode_frame({"a": "x" * 300}) + encode_frame({"b": 2})
    source = MemorySource(data, sizes=[1])
    reader = FrameReader(source, chunk_bytes=4096)
    assert read_all(reader) == [{"a": "x" * 300}, {"b": 2}]
    assert min(source.requests) >= 4096  # never asks for a byte at a time


def test_large_body_is_requested_in_one_go() -> None:
    data = encode_frame(body_of_size(500_000))
    source = MemorySource(data)
    reader = FrameReader(source, chunk_bytes=1024)
    assert run(reader.read_frame()) == body_of_size(500_000)
    assert len(source.requests) == 2  # header chunk, then the rest of the body at once


def test_exactly_at_cap_is_accepted() -> None:
    reader = FrameReader(MemorySource(encode_frame(body_of_size(MAX_FRAME_BYTES))))
    assert run(reader.read_frame()) == body_of_size(MAX_FRAME_BYTES)
    small = FrameReader(MemorySource(frame(b"{}")), max_frame_bytes=2)
    assert run(small.read_frame()) == {}


def test_clean_eof_is_none_and_stays_none_without_reading_again() -> None:
    source = MemorySource(encode_frame({"a": 1}))
    reader = FrameReader(source)
    assert run(reader.read_frame()) == {"a": 1}
    assert run(reader.read_frame()) is None
    reads = len(source.requests)
    assert run(reader.read_frame()) is None
    assert len(source.requests) == reads and reader.at_eof


def test_empty_stream_is_none() -> None:
    assert run(FrameReader(MemorySource(b"")).read_frame()) is None


def test_async_iteration() -> None:
    reader = FrameReader(MemorySource(encode_frame({"a": 1}) + encode_frame({"b": 2})))

    async def collect() -> list[dict[str, Any]]:
        return [item async for item in reader]

    assert run(collect()) == [{"a": 1}, {"b": 2}]


def test_buffered_and_mid_frame() -> None:
    data = encode_frame({"a": 1})
    reader = FrameReader(MemorySource(data + data[:3]))
    assert not reader.mid_frame
    assert run(reader.read_frame()) == {"a": 1}
    assert reader.buffered == 3 and reader.mid_frame
    with pytest.raises(TruncatedFrame):
        run(reader.read_frame())
    assert reader.buffered == 3 and reader.mid_frame


async def test_asyncio_stream_reader_is_a_source() -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(encode_frame({"a": 1}) + encode_frame({"b": [2]})[:5])
    stream.feed_data(encode_frame({"b": [2]})[5:])
    stream.feed_eof()
    reader = FrameReader(stream)
    assert [f async for f in reader] == [{"a": 1}, {"b": [2]}]


async def test_a_cancelled_read_loses_nothing() -> None:
    """A caller's deadline cancels the read mid-frame; the bytes so far stay buffered."""
    data = encode_frame({"slow": "loris" * 10})
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    queue.put_nowait(data[:7])

    class QueueSource:
        async def read(self, n: int) -> bytes:
            return await queue.get()

    reader = FrameReader(QueueSource())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read_frame(), timeout=0.05)
    assert reader.mid_frame and reader.buffered == 7
    queue.put_nowait(data[7:])
    assert await reader.read_frame() == {"slow": "loris" * 10}


def test_source_errors_propagate_unchanged() -> None:
    class Broken:
        async def read(self, n: int) -> bytes:
            raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError):
        run(FrameReader(Broken()).read_frame())


# -- reader: refusals --------------------------------------------------------------------------


def test_over_cap_is_refused_before_the_body_is_read() -> None:
    body = b"{" + b" " * MAX_FRAME_BYTES + b"}"
    source = MemorySource(frame(body))
    reader = FrameReader(source)
    with pytest.raises(FrameTooLarge) as err:
        run(reader.read_frame())
    assert err.value.length == MAX_FRAME_BYTES + 2
    assert source.requests == [DEFAULT_CHUNK_BYTES]  # one chunk, then stopped
    assert source.remaining >= len(body) - DEFAULT_CHUNK_BYTES


def test_cap_plus_one_refused_with_small_cap_and_source_not_drained() -> None:
    source = MemorySource(frame(b"x" * 101), sizes=[4])
    reader = FrameReader(source, max_frame_bytes=100, chunk_bytes=4)
    with pytest.raises(FrameTooLarge):
        run(reader.read_frame())
    assert source.pos == 4 and source.remaining == 101


def test_huge_declared_length_is_refused_at_once() -> None:
    source = MemorySource(b"\xff\xff\xff\xff" + b"{}" * 10)
    with pytest.raises(FrameTooLarge, match="4294967295"):
        run(FrameReader(source).read_frame())
    assert len(source.requests) == 1


@pytest.mark.parametrize(
    "data",
    [b"\x00", b"\x00\x00\x00", frame(b'{"a":1}')[:-1], frame(b"{}")[:4], b"\x00\x00\x00\x09{}"],
)
def test_eof_mid_frame_is_truncated(data: bytes) -> None:
    with pytest.raises(TruncatedFrame):
        run(FrameReader(MemorySource(data)).read_frame())


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": "\xc3"}', "not UTF-8"),
        (b"{'a': 1}", "not JSON"),
        (b'{"a": 1} trailing', "not JSON"),
        (b"[1, 2]", "list, not an object"),
        (b'"just a string"', "str, not an object"),
        (b"null", "NoneType"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": [-Infinity]}', "-Infinity"),
        (b'{"a": 1e400}', "overflows"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"o": {"k": 1, "z": 0, "k": 1}}', "duplicate key 'k'"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (b'{"a": ' + b"7" * 5000 + b"}", "unreadable value"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
    ],
)
def test_malformed_bodies(body: bytes, why: str) -> None:
    reader = FrameReader(MemorySource(frame(body)))
    with pytest.raises(MalformedFrame, match=why.replace("(", r"\(")):
        run(reader.read_frame())


def test_valid_surrogate_pairs_and_escapes_are_fine() -> None:
    body = b'{"emoji": "\\ud83d\\ude00", "bs": "\\\\udc00", "n": -0.0, "e": 1e-400}'
    assert decode_body(body) == {"emoji": "😀", "bs": "\\udc00", "n": 0.0, "e": 0.0}


def test_errors_are_terminal() -> None:
    source = MemorySource(frame(b"[]") + encode_frame({"a": 1}))
    reader = FrameReader(source)
    with pytest.raises(MalformedFrame):
        run(reader.read_frame())
    reads = len(source.requests)
    with pytest.raises(MalformedFrame):
        run(reader.read_frame())
    assert len(source.requests) == reads


def test_every_error_is_a_frame_error() -> None:
    for cls in (FrameTooLarge, MalformedFrame, TruncatedFrame, FrameEncodeError):
        assert issubclass(cls, FrameError)


# -- hypothesis --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
chunk_sizes = st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8)


@FAST
@given(objs=st.lists(json_objects, max_size=4), sizes=chunk_sizes, chunk=st.integers(1, 512))
def test_round_trip_through_random_chunking(
    objs: list[dict[str, Any]], sizes: list[int], chunk: int
) -> None:
    data = b"".join(encode_frame(o) for o in objs)
    reader = FrameReader(MemorySource(data, sizes), chunk_bytes=chunk)
    assert read_all(reader) == objs


def _segment() -> st.SearchStrategy[bytes]:
    valid = json_objects.map(encode_frame)
    declared = st.builds(
        lambda n, body: struct.pack(">I", n) + body,
        st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1), st.sampled_from([2**32 - 1])),
        st.binary(max_size=80),
    )
    hostile_json = st.sampled_from(
        [b"[]", b"NaN", b'{"a":Infinity}', b'{"a":1,"a":1}', b'"\\ud800"', b"[" * 3000, b"{"]
    ).map(frame)
    return st.one_of(valid, declared, hostile_json, st.binary(max_size=40))


@FAST
@given(
    segments=st.lists(_segment(), max_size=5),
    cut=st.none() | st.integers(min_value=0),
    sizes=chunk_sizes,
    cap=st.sampled_from([2, 16, 200, MAX_FRAME_BYTES]),
)
def test_hostile_bytes_only_give_frames_or_typed_errors(
    segments: list[bytes], cut: int | None, sizes: list[int], cap: int
) -> None:
    data = b"".join(segments)
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    source = MemorySource(data, sizes)
    reader = FrameReader(source, max_frame_bytes=cap, chunk_bytes=64)
    frames = 0
    try:
        while (item := run(reader.read_frame())) is not None:
            assert isinstance(item, dict)
            frames += 1
            assert frames <= len(data) // 6  # each frame costs at least 6 bytes: no loop
    except FrameError as exc:
        event(type(exc).__name__)
    assert len(source.requests) <= len(data) + 2  # every read made progress


@FAST
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decode_body_returns_an_object_or_malformed(body: bytes) -> None:
    with contextlib.suppress(MalformedFrame):
        assert isinstance(decode_body(body), dict)


def test_deep_nesting_is_refused_even_with_web3s_recursion_limit() -> None:
    """web3 pulls in py_ecc, which raises the recursion limit to 100,000: json.loads on a
    deeply nested frame then overflows the C stack. Run it in a child, so a crash is a
    failure here rather than the end of the test run."""
    import subprocess
    import sys

    code = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from fabstir_tui.engine.p2p.frames import MalformedFrame, decode_body\n"
        "for body in (b'[' * 200_000 + b']' * 200_000, b'{\"a\":' * 65 + b'1' + b'}' * 65):\n"
        "    try:\n"
        "        decode_body(body)\n"
        "    except MalformedFrame as exc:\n"
        "        print(exc)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-500:]
    assert child.stdout.count("nests too deeply") == 2
