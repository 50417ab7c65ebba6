"""Generation requests and the async token stream the loop side reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any


class InferenceError(RuntimeError):
    """A request or model operation failed; the message is one sentence for the operator."""


class LoadRefusedError(InferenceError):
    """A load not attempted (already loading, node stopping): not a failure of the model."""


class WorkerDiedError(InferenceError):
    """The worker process ended while work was in flight (crash, OOM kill, SIGKILL)."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt (plain text) or chat (messages) and its sampler settings."""

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    max_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int = -1
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a request needs exactly one of prompt or messages")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")

    def sampler(self) -> dict[str, Any]:
        """The sampler settings a re-run needs (what receipts hash and the archive keeps)."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
        }

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        data["messages"] = list(self.messages) if self.messages is not None else None
        data["stop"] = list(self.stop)
        if self.messages is None:
            del data["messages"]
        return data


@dataclass(slots=True)
class GenerationStats:
    """What a finished stream measured: the figures the playground and bench show."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    total_s: float = 0.0


_END = object()


@dataclass(eq=False)
class TokenStream:
    """Async iterator of text pieces for one request; `cancel()` stops it between tokens."""

    request_id: str
    _cancel: Callable[[str], Awaitable[None]]
    _queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    stats: GenerationStats = field(default_factory=GenerationStats)
    error: InferenceError | None = None
    done: bool = False
    started: bool = False
    _t_sent: float = field(default_factory=time.perf_counter)
    _t_first: float | None = None
    _t_last: float | None = None
    on_end: Callable[[TokenStream], None] | None = None

    # --- fed by the worker reader ------------------------------------------------------

    def feed_started(self, prompt_tokens: int) -> None:
        self.started = True
        self.stats.prompt_tokens = prompt_tokens

    def feed_token(self, text: str) -> None:
        now = time.perf_counter()
        if self._t_first is None:
            self._t_first = now
            self.stats.ttft_s = now - self._t_sent
        self._t_last = now
        self._queue.put_nowait(text)

    def feed_done(self, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None:
        self.stats.prompt_tokens = prompt_tokens
        self.stats.completion_tokens = completion_tokens
        self.stats.finish_reason = finish_reason
        self._finish()

    def feed_error(self, error: InferenceError) -> None:
        self.error = error
        self.stats.finish_reason = "error"
        self._finish()

    def _finish(self) -> None:
        end = time.perf_counter()
        self.stats.total_s = end - self._t_sent
        first, last = self._t_first, self._t_last
        if first is not None and last is not None and self.stats.completion_tokens > 1:
            span = last - first
            if span > 0:
                # Tokens after the first over the time they took: llama-server's definition.
                self.stats.tokens_per_s = (self.stats.completion_tokens - 1) / span
        self.done = True
        self._queue.put_nowait(_END)
        if self.on_end is not None:
            self.on_end(self)

    # --- read by the consumer --------------------------------------------------------

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> str:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            if self.error is not None:
                raise self.error
            raise StopAsyncIteration
        assert isinstance(item, str)
        return item

    async def cancel(self) -> None:
        if not self.done:
            await self._cancel(self.request_id)

    async def text(self) -> str:
        """Drain the stream; raises its error if it failed."""
        return "".join([piece async for piece in self])
