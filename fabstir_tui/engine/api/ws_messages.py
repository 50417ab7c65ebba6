"""The messages of the WebSocket session protocol (`GET /v1/ws`, see ws.py): a client's text
frame parsed into a typed message (every refusal naming its field, so a client can fix its
request without reading our code) and the JSON objects the server sends back."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from fabstir_tui.engine.api.errors import ApiError
from fabstir_tui.engine.api.shapes import Ask, parse_ask

INVALID = "invalid_message"
MAX_ID_CHARS = 128
MAX_KEY_CHARS = 4096
MAX_DECIMAL_DIGITS = 78  # a uint256 in decimal
_PROMPT_FIELDS = ("max_tokens", "temperature", "seed", "stop")


class InvalidMessage(Exception):
    """A client message we cannot act on; `request_id` when the message named one."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Init:
    """The first message: the model, and the session's signed auth (paid) or the key."""

    model: str
    session_id: str | None
    auth: dict[str, Any] | None
    api_key: str | None

    @property
    def paid(self) -> bool:
        return self.session_id is not None or self.auth is not None


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request on an open session; `fields` are checked again by `ask_for`."""

    id: str
    fields: dict[str, Any]
    auth: dict[str, Any] | None

    @property
    def chat(self) -> bool:
        return "messages" in self.fields


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the request with this id (queued or running)."""

    id: str


ClientMessage = Init | Prompt | Cancel


def _field(name: str, why: str, request_id: str | None = None) -> InvalidMessage:
    return InvalidMessage(f"field {name!r}: {why}", request_id)


def _request_id(body: dict[str, Any]) -> str:
    value = body.get("id")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise _field("id", f"expected a string of 1 to {MAX_ID_CHARS} characters")
    return value


def _opt_auth(body: dict[str, Any], request_id: str | None = None) -> dict[str, Any] | None:
    value = body.get("auth")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _field("auth", "expected the signed JobRequest object (DESIGN §11.6)", request_id)
    return value


def _session_id(body: dict[str, Any]) -> str | None:
    value = body.get("session_id")
    if value is None:
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdecimal() or len(text) > MAX_DECIMAL_DIGITS:
        raise _field("session_id", "expected a decimal session id (a string or an integer)")
    return text


def _init(body: dict[str, Any]) -> Init:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _field("model", "expected the id (0x SHA-256) or name of a loaded model")
    api_key = body.get("api_key")
    if api_key is not None and (not isinstance(api_key, str) or len(api_key) > MAX_KEY_CHARS):
        raise _field("api_key", "expected the operator's key as a string")
    init = Init(model, _session_id(body), _opt_auth(body), api_key)
    if init.paid and (init.session_id is None or init.auth is None):
        missing = "auth" if init.auth is None else "session_id"
        raise _field(missing, "a paid session needs both 'session_id' and its signed 'auth'")
    if init.paid and api_key is not None:
        raise _field("api_key", "send either the operator's key or a session's auth, not both")
    return init


def _prompt(body: dict[str, Any]) -> Prompt:
    request_id = _request_id(body)
    has_prompt, has_messages = "prompt" in body, "messages" in body
    if has_prompt == has_messages:
        raise _field("prompt", "send exactly one of 'prompt' or 'messages'", request_id)
    text = "messages" if has_messages else "prompt"
    fields = {name: body[name] for name in (text, *_PROMPT_FIELDS) if name in body}
    return Prompt(request_id, fields, _opt_auth(body, request_id))


def parse_message(text: str | bytes) -> ClientMessage:
    """A client's frame as its message, or InvalidMessage naming the first bad field."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"the message is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidMessage("the message must be a JSON object with a 'type'")
    kind = body.get("type")
    if kind == "init":
        return _init(body)
    if kind == "prompt":
        return _prompt(body)
    if kind == "cancel":
        return Cancel(_request_id(body))
    raise _field("type", f"expected 'init', 'prompt' or 'cancel', not {str(kind)[:40]!r}")


def ask_for(prompt: Prompt, model: str, session_id: str | None) -> Ask:
    """The prompt as the HTTP API's request (the same field checks), on the session's model."""
    body = {"model": model, **prompt.fields}
    try:
        ask = parse_ask("chat" if prompt.chat else "completion", body, {})
    except ApiError as exc:
        raise InvalidMessage(exc.message, prompt.id) from None
    return replace(ask, session_id=session_id)


# --- server → client ---------------------------------------------------------------------


def ready(mode: str, session_id: str | None, model: str) -> dict[str, Any]:
    return {"type": "ready", "mode": mode, "session_id": session_id, "model": model}


def queued(request_id: str, position: int) -> dict[str, Any]:
    return {"type": "queued", "id": request_id, "position": position}


def chunk(request_id: str, text: str, tokens: int) -> dict[str, Any]:
    return {"type": "chunk", "id": request_id, "text": text, "tokens": tokens}


def end(
    request_id: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    receipt: dict[str, Any] | None,
) -> dict[str, Any]:
    """The last message of a request: why it stopped, the usage and the signed receipt."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return {
        "type": "end",
        "id": request_id,
        "finish_reason": finish_reason,
        "usage": usage,
        "receipt": receipt,
    }


def error(code: str, message: str, status: int, request_id: str | None = None) -> dict[str, Any]:
    """A refusal; with an `id` it ends that request only and the connection stays open."""
    body: dict[str, Any] = {"type": "error", "code": code, "message": message, "status": status}
    if request_id is not None:
        body["id"] = request_id
    return body


def close_code(status: int) -> int:
    """The WebSocket close code for a refusal: 4000 + its HTTP status (4401, 4403, 4404...);
    1011 (internal error) for a 5xx."""
    return 4000 + status if 400 <= status < 500 else 1011
