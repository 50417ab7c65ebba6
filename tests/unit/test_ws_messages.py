"""The WebSocket session protocol's messages: each good shape parses to its typed message, each
bad one is refused with a sentence naming its field (and the request id when it had one)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabstir_tui.engine.api import ws_messages as wire

AUTH = {"signer": "0x" + "11" * 20, "signature": "0x" + "22" * 65}


def parsed(body: Any) -> wire.ClientMessage:
    return wire.parse_message(json.dumps(body))


def refusal(body: Any) -> wire.InvalidMessage:
    with pytest.raises(wire.InvalidMessage) as caught:
        parsed(body) if not isinstance(body, str) else wire.parse_message(body)
    return caught.value


def test_good_messages_parse_to_their_types() -> None:
    paid = parsed({"type": "init", "model": "0xab", "session_id": 7, "auth": AUTH})
    assert isinstance(paid, wire.Init) and paid.paid
    assert paid == wire.Init("0xab", "7", AUTH, None)
    operator = parsed({"type": "init", "model": "tiny", "api_key": "k"})
    assert isinstance(operator, wire.Init) and not operator.paid
    assert operator == wire.Init("tiny", None, None, "k")
    prompt = parsed(
        {"type": "prompt", "id": "r1", "prompt": "Hi", "max_tokens": 5, "seed": 1, "x": 1}
    )
    assert prompt == wire.Prompt("r1", {"prompt": "Hi", "max_tokens": 5, "seed": 1}, None)
    assert isinstance(prompt, wire.Prompt) and not prompt.chat
    chat = parsed({"type": "prompt", "id": "c", "messages": [{"role": "user", "content": "x"}]})
    assert isinstance(chat, wire.Prompt) and chat.chat
    assert parsed({"type": "cancel", "id": "r1"}) == wire.Cancel("r1")
    assert wire.parse_message(b'{"type":"cancel","id":"b"}') == wire.Cancel("b")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("{not json", "not JSON"),
        ([1, 2], "JSON object"),
        ({"type": "hello"}, "'type'"),
        ({"model": "m"}, "'type'"),
        ({"type": "init"}, "'model'"),
        ({"type": "init", "model": ""}, "'model'"),
        ({"type": "init", "model": "m", "session_id": "7"}, "'auth'"),
        ({"type": "init", "model": "m", "auth": AUTH}, "'session_id'"),
        ({"type": "init", "model": "m", "session_id": "x7", "auth": AUTH}, "'session_id'"),
        ({"type": "init", "model": "m", "session_id": True, "auth": AUTH}, "'session_id'"),
        ({"type": "init", "model": "m", "session_id": "7", "auth": "sig"}, "'auth'"),
        ({"type": "init", "model": "m", "api_key": 5}, "'api_key'"),
        ({"type": "init", "model": "m", "session_id": 7, "auth": AUTH, "api_key": "k"}, "api_key"),
        ({"type": "prompt", "prompt": "x"}, "'id'"),
        ({"type": "prompt", "id": "", "prompt": "x"}, "'id'"),
        ({"type": "prompt", "id": "x" * 129, "prompt": "x"}, "'id'"),
        ({"type": "cancel"}, "'id'"),
        ({"type": "cancel", "id": 3}, "'id'"),
    ],
)
def test_each_bad_shape_names_its_field(body: Any, named: str) -> None:
    assert named in refusal(body).message


def test_a_bad_prompt_names_its_field_and_its_request() -> None:
    both = refusal({"type": "prompt", "id": "r1", "prompt": "x", "messages": []})
    assert "'prompt'" in both.message and both.request_id == "r1"
    neither = refusal({"type": "prompt", "id": "r2"})
    assert "exactly one" in neither.message and neither.request_id == "r2"
    bad_auth = refusal({"type": "prompt", "id": "r3", "prompt": "x", "auth": [1]})
    assert "'auth'" in bad_auth.message and bad_auth.request_id == "r3"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"prompt": 5}, "'prompt'"),
        ({"prompt": "x", "max_tokens": 0}, "'max_tokens'"),
        ({"prompt": "x", "temperature": 9}, "'temperature'"),
        ({"prompt": "x", "seed": -1}, "'seed'"),
        ({"prompt": "x", "stop": [""]}, "'stop'"),
        ({"messages": []}, "'messages'"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "'messages[0].role'"),
    ],
)
def test_a_prompt_gets_the_http_apis_field_checks(fields: dict[str, Any], named: str) -> None:
    prompt = parsed({"type": "prompt", "id": "r9", **fields})
    assert isinstance(prompt, wire.Prompt)
    with pytest.raises(wire.InvalidMessage) as caught:
        wire.ask_for(prompt, "0xab", None)
    assert named in caught.value.message and caught.value.request_id == "r9"


def test_a_good_prompt_becomes_the_sessions_ask() -> None:
    prompt = parsed(
        {"type": "prompt", "id": "r1", "prompt": "Hi", "max_tokens": 4, "temperature": 0}
    )
    assert isinstance(prompt, wire.Prompt)
    ask = wire.ask_for(prompt, "0xab", "7")
    assert (ask.kind, ask.model, ask.prompt, ask.max_tokens) == ("completion", "0xab", "Hi", 4)
    assert ask.temperature == 0.0 and ask.session_id == "7" and ask.job_id is None
    assert not ask.stream


def test_server_messages_and_close_codes() -> None:
    end = wire.end("r1", "length", 3, 4, None)
    assert end["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert wire.error("busy", "m", 409, "r1")["id"] == "r1"
    assert "id" not in wire.error("invalid_api_key", "m", 401)
    assert [wire.close_code(s) for s in (401, 403, 404, 408, 503)] == [4401, 4403, 4404, 4408, 1011]


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_with_a_sentence(text: str) -> None:
    try:
        wire.parse_message(text)
    except wire.InvalidMessage as exc:
        assert exc.message
