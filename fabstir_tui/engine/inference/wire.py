"""Frames between the engine and an inference worker: 4-byte big-endian length + JSON."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any, BinaryIO

MAX_FRAME_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class FrameError(RuntimeError):
    """A frame on the worker pipe was malformed: the other side is broken, not the request."""


def encode_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME_BYTES} byte cap")
    return _HEADER.pack(len(body)) + body


def _decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"frame is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    return message


def _check_length(length: int) -> None:
    if length > MAX_FRAME_BYTES:
        raise FrameError(f"frame length {length} exceeds the {MAX_FRAME_BYTES} byte cap")


def read_frame_sync(stream: BinaryIO) -> dict[str, Any] | None:
    """Blocking read for the worker side; None at a clean end of stream."""
    header = stream.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise FrameError("stream ended inside a frame header")
    (length,) = _HEADER.unpack(header)
    _check_length(length)
    body = stream.read(length)
    if len(body) < length:
        raise FrameError("stream ended inside a frame body")
    return _decode(body)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Async read for the engine side; None at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("stream ended inside a frame header") from exc
    (length,) = _HEADER.unpack(header)
    _check_length(length)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError("stream ended inside a frame body") from exc
    return _decode(body)
