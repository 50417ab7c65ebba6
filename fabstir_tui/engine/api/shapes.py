"""OpenAI request and response shapes: what a completion or chat request asks for (checked
field by field, each refusal naming its field) and the JSON an OpenAI client expects back."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fabstir_tui.engine.api.errors import ApiError
from fabstir_tui.engine.p2p.frames import has_lone_surrogate

Kind = Literal["completion", "chat"]
MAX_STOPS = 4
MAX_MESSAGES = 1024
MAX_TEMPERATURE = 2.0
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Ask:
    """One completion or chat request, parsed: the engine-facing part of an OpenAI body."""

    kind: Kind
    model: str
    prompt: str | None
    messages: tuple[dict[str, str], ...] | None
    max_tokens: int | None
    temperature: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    job_id: str | None
    session_id: str | None
    include_usage: bool = False  # stream_options.include_usage: a usage chunk before [DONE]


def _bad(field: str, why: str) -> ApiError:
    return ApiError(400, "invalid_request", f"field {field!r}: {why}")


def _opt_number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(name, f"expected a number from {low:g} to {high:g}")
    return float(value)


def _opt_int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(name, f"expected an integer from {low} to {high}")
    return int(value)


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_STOPS:
        raise _bad("stop", f"expected a string or a list of at most {MAX_STOPS} strings")
    if not all(isinstance(s, str) and s for s in items):
        raise _bad("stop", "every stop sequence must be a non-empty string")
    return tuple(_text("stop", item) for item in items)


def _text(field: str, text: str) -> str:
    """Text the model and the hashes can take: a lone surrogate (JSON's \\ud800) cannot."""
    if has_lone_surrogate(text):
        raise _bad(field, "contains a lone UTF-16 surrogate (not a character)")
    return text


def _flag(body: dict[str, Any], name: str) -> bool:
    """A boolean field; null is absent (false)."""
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(name, "expected true or false")
    return value


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _bad("stream_options", "expected an object")
    return _flag(options, "include_usage")


def _id(body: dict[str, Any], headers: Mapping[str, str], name: str, header: str) -> str | None:
    """A job/session id from the body or its header (the body wins), as a decimal string."""
    value = body.get(name)
    if value is None:
        value = headers.get(header)
    if value is None:
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdecimal() or len(text) > 78:
        raise _bad(name, "expected a decimal id (a string or an integer)")
    return text


def _content(message: Any, index: int) -> dict[str, str]:
    if not isinstance(message, dict):
        raise _bad(f"messages[{index}]", "expected an object with 'role' and 'content'")
    role, content = message.get("role"), message.get("content")
    if role not in ("system", "user", "assistant", "developer"):
        raise _bad(f"messages[{index}].role", "expected system, developer, user or assistant")
    if isinstance(content, list):  # OpenAI's content parts: text parts only
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
            raise _bad(f"messages[{index}].content", "only text content parts are supported")
        content = "".join(str(p) for p in parts)
    if not isinstance(content, str):
        raise _bad(f"messages[{index}].content", "expected a string")
    content = _text(f"messages[{index}].content", content)
    return {"role": "system" if role == "developer" else str(role), "content": content}


def parse_ask(kind: Kind, body: Any, headers: Mapping[str, str]) -> Ask:
    """The request's fields, or a 400 naming the first bad one."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "expected the id (0x SHA-256) or name of a loaded model")
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    if kind == "completion":
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            raw = raw[0]
        if not isinstance(raw, str):
            raise _bad("prompt", "expected a string (one prompt per request)")
        prompt = _text("prompt", raw)
    else:
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not 0 < len(raw_messages) <= MAX_MESSAGES:
            raise _bad("messages", f"expected a list of 1 to {MAX_MESSAGES} messages")
        messages = tuple(_content(m, i) for i, m in enumerate(raw_messages))
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    stream = _flag(body, "stream")
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("n", "this node returns one choice per request")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise _bad("logprobs", "this node does not return log probabilities")
    return Ask(
        kind=kind,
        model=model,
        prompt=prompt,
        messages=messages,
        max_tokens=_opt_int({"max_tokens": limit}, "max_tokens", 1, 1 << 20),
        temperature=_opt_number(body, "temperature", 0.0, MAX_TEMPERATURE),
        seed=_opt_int(body, "seed", 0, 2**32 - 1),
        stop=_stops(body),
        stream=stream,
        job_id=_id(body, headers, "job_id", "X-Fabstir-Job"),
        session_id=_id(body, headers, "session_id", "X-Fabstir-Session"),
        include_usage=_include_usage(body),
    )


@dataclass(slots=True)
class Reply:
    """One response's identity: the same id and timestamp on every chunk of a stream."""

    kind: Kind
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        prefix = "chatcmpl-" if self.kind == "chat" else "cmpl-"
        self.id = self.id or prefix + secrets.token_hex(12)
        self.created = self.created or int(time.time())

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(
        self, text: str, finish: str, usage: dict[str, int], extra: dict[str, Any]
    ) -> dict[str, Any]:
        """A non-streamed response."""
        if self.kind == "chat":
            body = self._base("chat.completion")
            body["choices"] = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ]
        else:
            body = self._base("text_completion")
            body["choices"] = [
                {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            ]
        body["usage"] = usage
        body.update(extra)
        return body

    def chunk(
        self,
        text: str | None,
        *,
        first: bool = False,
        finish: str | None = None,
        usage: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One streamed chunk; the last carries the finish reason and the usage."""
        if self.kind == "chat":
            body = self._base("chat.completion.chunk")
            delta: dict[str, str] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            body = self._base("text_completion")
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        body["choices"] = [choice]
        if usage is not None:
            body["usage"] = usage
        if extra:
            body.update(extra)
        return body

    def usage_chunk(self, counts: dict[str, int]) -> dict[str, Any]:
        """stream_options.include_usage's last chunk: no choices, the usage."""
        body = self._base("chat.completion.chunk" if self.kind == "chat" else "text_completion")
        body["choices"] = []
        body["usage"] = counts
        return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_reason(reason: str) -> str:
    """The engine's finish reason in OpenAI's words (stop, length)."""
    return reason if reason in ("stop", "length") else "stop"
