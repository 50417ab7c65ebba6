"""Wire framing for the Fabstir P2P protocols (DESIGN §5): 4-byte big-endian length + JSON.

Transport-agnostic on purpose: the reader pulls from anything with ``async read(n)`` that
returns ``b""`` at end of stream (an ``asyncio.StreamReader`` already fits; a libp2p stream
needs a small adapter that turns ``StreamEOF`` into ``b""``). It never imports a transport.

Decisions:
- The cap (default 1 MiB) bounds the JSON body, not the 4-byte header; a body of exactly the
  cap is accepted. A declared length over the cap is refused before any more body bytes are
  read, so a hostile peer cannot make us buffer it.
- Bodies are strict JSON objects in UTF-8: invalid UTF-8, NaN/Infinity (also overflowing
  literals such as ``1e400``), integers too long for Python to convert, nesting deep enough to
  exhaust the parser's recursion limit, lone surrogate escapes and **duplicate keys** are all
  ``MalformedFrame``. Duplicate keys are refused because request frames carry signed fields
  and two parsers that pick different duplicates would verify one value and act on another.
- Every ``FrameError`` from the reader is terminal: the protocol answers with an error frame
  (where the peer can still read) and closes the stream, so later calls re-raise it.
- Deadlines are the caller's: wrap ``read_frame()`` in ``asyncio.timeout`` or
  ``trio.fail_after`` (idle time between frames and slow-loris time inside one are told apart
  by ``mid_frame``). ``read_frame`` is cancellation-safe: bytes already received stay
  buffered, so a cancelled call loses nothing.
- Errors raised by the source itself (reset, closed connection) propagate unchanged.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any, Protocol

import numpy as np

MAX_FRAME_BYTES = 1024 * 1024
DEFAULT_CHUNK_BYTES = 64 * 1024
HEADER_BYTES = 4
_HEADER = struct.Struct(">I")
_MIN_CAP = 2  # the smallest frame body, "{}"
_MAX_CAP = 2**32 - 1  # what 4 header bytes can declare


class FrameError(Exception):
    """Base of every framing failure, so a protocol handler can catch one type."""


class FrameTooLarge(FrameError):
    """A frame's length is over the cap: refused without reading (or building) its body."""

    def __init__(self, length: int, cap: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the {cap} byte cap")
        self.length = length
        self.cap = cap


class MalformedFrame(FrameError):
    """A frame's body (or a message in it) is not what the protocol allows."""


class TruncatedFrame(FrameError):
    """The stream ended inside a frame: the peer went away or was cut off mid-message."""


class FrameEncodeError(FrameError, ValueError):
    """We were asked to send something strict JSON cannot carry exactly: a bug on our side."""


class ByteSource(Protocol):
    """Anything the reader can pull bytes from; ``b""`` means end of stream."""

    async def read(self, n: int) -> bytes: ...


def _check_cap(cap: int) -> int:
    if isinstance(cap, bool) or not isinstance(cap, int) or not _MIN_CAP <= cap <= _MAX_CAP:
        raise ValueError(f"frame cap must be an int in [{_MIN_CAP}, {_MAX_CAP}], got {cap!r}")
    return cap


def encode_frame(obj: dict[str, Any], *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Header + compact UTF-8 JSON for a dict; refuses what the peer's decoder would refuse."""
    cap = _check_cap(max_frame_bytes)
    if not isinstance(obj, dict):
        raise FrameEncodeError(f"a frame must be a JSON object (dict), not {type(obj).__name__}")
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        body = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise FrameEncodeError(f"frame is not encodable as JSON: {exc}") from exc
    _check_keys(obj)  # after dumps, which has already refused circular references
    if len(body) > cap:
        raise FrameTooLarge(len(body), cap)
    return _HEADER.pack(len(body)) + body


def _check_keys(obj: dict[str, Any]) -> None:
    """Refuse non-str keys, which json.dumps would silently turn into (maybe duplicate) strings."""
    stack: list[Any] = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise FrameEncodeError(f"frame object keys must be str, got {key!r}")
                stack.append(item)
        elif isinstance(value, list | tuple):
            stack.extend(value)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise MalformedFrame(f"number {text[:40]!r} overflows a float")
    return value


def _refuse_constant(name: str) -> Any:
    raise MalformedFrame(f"{name} is not allowed in a frame")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedFrame(f"duplicate key {key[:64]!r} in frame")
            seen.add(key)
    return result


def has_lone_surrogate(obj: Any) -> bool:
    """True when any str in the tree cannot be UTF-8 encoded (a lone ``\\udXXX`` escape)."""
    stack: list[Any] = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


MAX_NESTING = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")


def nesting_depth(body: bytes) -> int:
    """How deep the body's arrays and objects nest, brackets inside strings not counted.
    Checked before json.loads: web3's py_ecc raises the recursion limit to 100,000, so a
    deeply nested frame would overflow the C stack (a segfault seen here), not raise."""
    if body.count(b"[") + body.count(b"{") <= MAX_NESTING:
        return 0  # cannot nest deeper than the brackets it has
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", body))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def decode_body(body: bytes | bytearray) -> dict[str, Any]:
    """Strict JSON object from a frame body, or MalformedFrame saying what was wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFrame(f"frame is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    if nesting_depth(bytes(body)) > MAX_NESTING:
        raise MalformedFrame(f"frame nests too deeply (more than {MAX_NESTING} levels)")
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_float=_finite_float,
            parse_constant=_refuse_constant,
        )
    except MalformedFrame:
        raise
    except json.JSONDecodeError as exc:
        raise MalformedFrame(f"frame is not JSON: {exc.msg} at char {exc.pos}") from exc
    except RecursionError as exc:
        raise MalformedFrame("frame nests too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal over Python's digit limit
        raise MalformedFrame(f"frame has an unreadable value: {str(exc)[:120]}") from exc
    if not isinstance(obj, dict):
        raise MalformedFrame(f"frame is a JSON {type(obj).__name__}, not an object")
    if "\\u" in text and has_lone_surrogate(obj):
        raise MalformedFrame("frame has a lone UTF-16 surrogate escape")
    return obj


class FrameReader:
    """Whole frames from a byte source, read in large chunks into one buffer."""

    def __init__(
        self,
        source: ByteSource,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
        self._source = source
        self._cap = _check_cap(max_frame_bytes)
        self._chunk = chunk_bytes
        self._buf = bytearray()
        self._pos = 0  # start of unconsumed bytes in _buf
        self._eof = False
        self._failed: FrameError | None = None

    @property
    def max_frame_bytes(self) -> int:
        """The cap this reader enforces on frame bodies."""
        return self._cap

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    @property
    def mid_frame(self) -> bool:
        """True when part of the next frame has arrived: a stall now is slow-loris, not idle."""
        return self.buffered > 0

    @property
    def at_eof(self) -> bool:
        """True once the source has reported end of stream."""
        return self._eof

    async def _fill(self, need: int) -> bool:
        """Buffer at least ``need`` unconsumed bytes; False if the stream ends first."""
        while self.buffered < need:
            if self._eof:
                return False
            if self._pos:
                del self._buf[: self._pos]  # compact only when we must read: amortised O(n)
                self._pos = 0
            chunk = await self._source.read(max(self._chunk, need - self.buffered))
            if not chunk:
                self._eof = True
                return False
            self._buf += chunk
        return True

    async def read_frame(self) -> dict[str, Any] | None:
        """The next frame's object; None at a clean end of stream between frames."""
        if self._failed is not None:
            raise self._failed
        try:
            return await self._read_frame()
        except FrameError as exc:
            self._failed = exc
            raise

    async def _read_frame(self) -> dict[str, Any] | None:
        if not await self._fill(HEADER_BYTES):
            if self.buffered:
                raise TruncatedFrame(f"stream ended after {self.buffered} of 4 header bytes")
            return None
        (length,) = _HEADER.unpack_from(self._buf, self._pos)
        if length > self._cap:
            raise FrameTooLarge(length, self._cap)
        if not await self._fill(HEADER_BYTES + length):
            got = self.buffered - HEADER_BYTES
            raise TruncatedFrame(f"stream ended after {got} of {length} frame body bytes")
        start = self._pos + HEADER_BYTES
        body = self._buf[start : start + length]
        self._pos = start + length
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        return decode_body(body)

    def __aiter__(self) -> FrameReader:
        return self

    async def __anext__(self) -> dict[str, Any]:
        frame = await self.read_frame()
        if frame is None:
            raise StopAsyncIteration
        return frame
