"""The API's request parsing and per-address rate limit, without a server: every bad field
is named in a 400, and the token bucket refills at the configured rate."""

from __future__ import annotations

from typing import Any

import pytest

from fabstir_tui.engine.api import limits
from fabstir_tui.engine.api.auth import credentials
from fabstir_tui.engine.api.errors import ApiError
from fabstir_tui.engine.api.limits import RateLimiter, limit_key
from fabstir_tui.engine.api.shapes import Reply, parse_ask


def refused(kind: Any, body: Any, headers: dict[str, str] | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_ask(kind, body, headers or {})
    assert caught.value.status == 400
    return caught.value


def test_each_bad_field_is_named() -> None:
    assert "'model'" in refused("completion", {"prompt": "x"}).message
    assert "'prompt'" in refused("completion", {"model": "m", "prompt": 3}).message
    assert "'messages'" in refused("chat", {"model": "m", "messages": []}).message
    bad_role = {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}
    assert "messages[0].role" in refused("chat", bad_role).message
    hot = {"model": "m", "prompt": "x", "temperature": 9}
    assert "'temperature'" in refused("completion", hot).message
    assert "'stop'" in refused("completion", {"model": "m", "prompt": "x", "stop": [1]}).message
    assert (
        "'job_id'" in refused("completion", {"model": "m", "prompt": "x", "job_id": "1a"}).message
    )
    assert refused("completion", [1, 2]).code == "invalid_request"


def test_a_good_request_parses_with_ids_from_body_or_header() -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 5,
        "stop": "\n",
        "stream": True,
    }
    ask = parse_ask("chat", body, {"X-Fabstir-Job": "42"})
    assert ask.messages == ({"role": "user", "content": "hi"},)
    assert (ask.max_tokens, ask.stop, ask.stream, ask.job_id) == (5, ("\n",), True, "42")
    assert parse_ask("chat", {**body, "job_id": 7}, {"X-Fabstir-Job": "42"}).job_id == "7"


def test_null_means_absent_as_openai_clients_send_it() -> None:
    body = {"model": "m", "prompt": "x", "n": None, "stream": None, "logprobs": None}
    ask = parse_ask("completion", {**body, "max_completion_tokens": None, "max_tokens": 50}, {})
    assert (ask.stream, ask.max_tokens, ask.include_usage) == (False, 50, False)
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    assert parse_ask("completion", streamed, {}).include_usage is True
    assert "'n'" in refused("completion", {**body, "n": 2}).message
    assert "'logprobs'" in refused("completion", {**body, "logprobs": 3}).message
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}
    assert "'logprobs'" in refused("chat", chat).message


def test_a_lone_surrogate_is_a_named_400_not_a_crash() -> None:
    lone = "\ud800"  # what json.loads makes of the escape "\\ud800"
    assert "'prompt'" in refused("completion", {"model": "m", "prompt": lone}).message
    chat = {"model": "m", "messages": [{"role": "user", "content": "a" + lone}]}
    assert "messages[0].content" in refused("chat", chat).message
    assert "'stop'" in refused("completion", {"model": "m", "prompt": "x", "stop": lone}).message
    with pytest.raises(ApiError) as caught:
        credentials("Bearer " + lone, "k")
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")


def test_the_usage_chunk_has_no_choices() -> None:
    reply = Reply("completion", "0xabc")
    counts = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    chunk = reply.usage_chunk(counts)
    assert (chunk["choices"], chunk["usage"], chunk["id"]) == ([], counts, reply.id)


def test_chunks_share_one_id_and_the_first_names_the_role() -> None:
    reply = Reply("chat", "0xabc")
    first, last = reply.chunk("he", first=True), reply.chunk(None, finish="stop")
    assert first["id"] == last["id"] and first["id"].startswith("chatcmpl-")
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "he"}
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}


def test_credentials_need_the_operator_key_or_a_fabstir_token() -> None:
    with pytest.raises(ApiError) as caught:
        credentials(None, "k")
    assert (caught.value.status, caught.value.code) == (401, "missing_authorization")
    with pytest.raises(ApiError) as caught:
        credentials("Bearer k", None)
    assert caught.value.code == "operator_mode_off"
    assert credentials("Bearer k", "k").paid_auth is None
    with pytest.raises(ApiError) as caught:
        credentials("Basic abc", "k")
    assert caught.value.code == "unsupported_authorization"


def test_the_rate_limit_allows_a_burst_then_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(20.0)  # one request every 20 s
    assert limiter.take("b") == 0.0  # another address has its own bucket
    now[0] = 20.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0


def test_an_ipv6_subscriber_counts_as_one_address_and_ipv4_as_itself() -> None:
    assert limit_key("127.0.0.2") == "127.0.0.2"
    assert limit_key("2001:db8:1:2::1") == limit_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert limit_key("unknown") == "unknown"


def test_the_limiter_keeps_a_bounded_number_of_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_TRACKED_ADDRESSES", 3)
    now = [0.0]
    limiter = RateLimiter(per_minute=2, clock=lambda: now[0])
    for ip in ("a", "b", "c"):
        limiter.take(ip)
    limiter.take("a")  # used again: "b" is now the least recently used
    assert limiter.take("a") > 0  # a's two requests are spent
    limiter.take("d")  # at the cap: b goes
    assert list(limiter._buckets) == ["c", "a", "d"]
    assert limiter.take("a") > 0  # a kept its spent bucket
    now[0] = 61.0  # every bucket has refilled: a newcomer clears them all
    limiter.take("e")
    assert list(limiter._buckets) == ["e"]
