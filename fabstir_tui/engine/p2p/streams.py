"""libp2p streams as frame sources and sinks (trio side).

`StreamSource` turns a libp2p stream into a `frames.ByteSource`: end of stream (`StreamEOF`)
or a stream already closed for reading reads as ``b""``; a reset propagates as itself. Each
read can carry a deadline (`trio.fail_after`), so a peer that stalls inside a frame or never
sends one cannot hold a handler forever; the deadline surfaces as `trio.TooSlowError`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from fabstir_tui.engine.p2p.frames import MAX_FRAME_BYTES, FrameReader, encode_frame

_log = logging.getLogger(__name__)


class StreamSource:
    """A libp2p stream read as a ByteSource; `read_timeout_s` bounds every single read."""

    def __init__(self, stream: Any, *, read_timeout_s: float | None = None) -> None:
        self._stream = stream
        self._timeout = read_timeout_s

    async def read(self, n: int) -> bytes:
        """Up to `n` bytes; ``b""`` at end of stream; TooSlowError past the deadline."""
        from libp2p.network.stream.exceptions import StreamClosed, StreamEOF

        if self._timeout is None:
            cm: Any = contextlib.nullcontext()
        else:
            cm = trio.fail_after(self._timeout)
        with cm:
            try:
                data: bytes = await self._stream.read(n)
            except (StreamEOF, StreamClosed):
                return b""
        return data


def frame_reader(
    stream: Any, *, read_timeout_s: float | None = None, max_frame_bytes: int = MAX_FRAME_BYTES
) -> FrameReader:
    """A FrameReader over a libp2p stream with a per-read deadline."""
    return FrameReader(
        StreamSource(stream, read_timeout_s=read_timeout_s), max_frame_bytes=max_frame_bytes
    )


async def write_frame(stream: Any, obj: dict[str, Any], *, timeout_s: float | None = None) -> None:
    """Encode `obj` as one frame and write it (FrameEncodeError for an unencodable obj)."""
    data = encode_frame(obj)
    if timeout_s is None:
        await stream.write(data)
        return
    with trio.fail_after(timeout_s):
        await stream.write(data)


async def close_quietly(stream: Any, *, timeout_s: float = 5.0) -> None:
    """Close a stream, ignoring a peer that already went away; resets it if closing stalls."""
    with trio.move_on_after(timeout_s):
        try:
            await stream.close()
            return
        except Exception:  # the peer reset or vanished; nothing left to do
            pass
    with contextlib.suppress(Exception), trio.move_on_after(1.0):
        await stream.reset()


async def serve_guarded(
    stream: Any, serve: Callable[[Any], Awaitable[None]], protocol: str
) -> None:
    """Run a stream handler so that it never raises into the host's nursery (an escaping
    exception could end the trio run); cancellation passes; the stream is always closed."""
    try:
        await serve(stream)
    except Exception as exc:  # a peer's misbehaviour or our bug: logged, never fatal
        _log.debug("%s stream ended with %s: %s", protocol, type(exc).__name__, exc)
    finally:
        with trio.CancelScope(shield=True):
            await close_quietly(stream)
