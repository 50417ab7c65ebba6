"""P2P message schemas: round trips, refusals that name the field, nothing but MalformedFrame."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabstir_tui.engine.p2p.frames import (
    FrameTooLarge,
    MalformedFrame,
    TruncatedFrame,
    decode_body,
    encode_frame,
)
from fabstir_tui.engine.p2p.messages import (
    MAX_MESSAGE_CHARS,
    Capacity,
    EndFrame,
    ErrorCode,
    ErrorFrame,
    GpuInfo,
    InfoRequest,
    InfoResponse,
    JobRequest,
    ModelOffer,
    TokenFrame,
    error_frame,
    error_frame_for,
    parse_end,
    parse_error,
    parse_info,
    parse_info_request,
    parse_job_reply,
    parse_job_request,
    parse_tokens,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKEN = "0x" + "ab" * 20
INFO = InfoResponse(
    models=(ModelOffer("0x" + "1" * 64, "SmolLM2-135M", 2_000_000, TOKEN),),
    capacity=Capacity(max_jobs=4, active_jobs=1, queued_jobs=2),
    api_url="http://127.0.0.1:8080",
    chain_address="0x" + "cd" * 20,
    version="0.1.0",
    gpu=GpuInfo("NVIDIA H100", 81559),
    chain_id=31337,
)
JOB = JobRequest(
    model_id="0x" + "1" * 64,
    prompt="Once upon a time",
    max_tokens=64,
    job_id="42",
    temperature=0.7,
    seed=7,
    auth={"signature": "0xdead", "nonce": 3},
)
ALL = [
    (InfoRequest(), parse_info_request),
    (INFO, parse_info),
    (JOB, parse_job_request),
    (TokenFrame(("Once", " upon"), 2), parse_tokens),
    (EndFrame(5, 64, "length", receipt={"root": "0x00"}), parse_end),
    (ErrorFrame("busy", "try later"), parse_error),
]
PARSERS: list[Callable[[Any], object]] = [parser for _, parser in ALL] + [parse_job_reply]


def wire(obj: dict[str, Any]) -> dict[str, Any]:
    """Through the real codec, as a peer would see it."""
    return decode_body(encode_frame(obj)[4:])


@pytest.mark.parametrize(("message", "parser"), ALL)
def test_round_trip_through_the_codec(message: Any, parser: Callable[[Any], object]) -> None:
    frame = message.to_frame()
    assert frame["v"] == 1 and isinstance(frame["t"], str)
    assert parser(wire(frame)) == message


def test_none_fields_are_left_out_and_minimal_info_parses() -> None:
    info = InfoResponse((), Capacity(1, 0), "", "", "0.1.0")
    frame = info.to_frame()
    assert "gpu" not in frame and "chain_id" not in frame
    assert parse_info(wire(frame)) == info
    job = JobRequest(model_id="m", prompt="p", max_tokens=1, session_id="s1")
    assert set(job.to_frame()) == {"v", "t", "session_id", "model_id", "prompt", "max_tokens"}
    assert parse_job_request(job.to_frame()) == job


def test_unknown_keys_are_ignored() -> None:
    frame = {**JOB.to_frame(), "future_field": [1, 2]}
    assert parse_job_request(frame) == JOB


def test_integer_temperature_becomes_float() -> None:
    job = parse_job_request({**JOB.to_frame(), "temperature": 1})
    assert job.temperature == 1.0 and isinstance(job.temperature, float)


def _set(frame: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``frame`` with a dotted path set (``models.0.id``) or deleted (value=...)."""
    out: Any = wire(frame)
    node = out
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    assert isinstance(out, dict)
    return out


@pytest.mark.parametrize(
    ("message", "path", "value", "named"),
    [
        (JOB, "v", 2, "'v'"),
        (JOB, "v", "1", "'v'"),
        (JOB, "v", True, "'v'"),
        (JOB, "v", 1.0, "'v'"),
        (JOB, "v", ..., "'v'"),
        (JOB, "t", "info", "'t'"),
        (JOB, "model_id", ..., "'model_id'"),
        (JOB, "model_id", "", "'model_id'"),
        (JOB, "model_id", "x" * 129, "'model_id'"),
        (JOB, "prompt", 5, "'prompt'"),
        (JOB, "max_tokens", 0, "'max_tokens'"),
        (JOB, "max_tokens", True, "'max_tokens'"),
        (JOB, "max_tokens", 1.5, "'max_tokens'"),
        (JOB, "max_tokens", 2**21, "'max_tokens'"),
        (JOB, "temperature", -0.1, "'temperature'"),
        (JOB, "temperature", float("nan"), "'temperature'"),
        (JOB, "temperature", 10**400, "'temperature'"),
        (JOB, "temperature", "hot", "'temperature'"),
        (JOB, "seed", -1, "'seed'"),
        (JOB, "seed", 2**32, "'seed'"),
        (JOB, "auth", "sig", "'auth'"),
        (JOB, "job_id", ..., "'job_id'/'session_id'"),
        (JOB, "session_id", "s", "'job_id'/'session_id'"),
        (JOB, "job_id", 42, "'job_id'"),
        (INFO, "models", {}, "'models'"),
        (INFO, "models", [None], "'models[0]'"),
        (INFO, "models.0.id", ..., "models[0]: field 'id'"),
        (INFO, "models.0.price_per_million", -1, "models[0]: field 'price_per_million'"),
        (INFO, "models.0.price_per_million", 2**256, "models[0]: field 'price_per_million'"),
        (INFO, "models.0.price_token", "0x12", "models[0]: field 'price_token'"),
        (INFO, "capacity", ..., "'capacity'"),
        (INFO, "capacity.active_jobs", "1", "capacity: field 'active_jobs'"),
        (INFO, "gpu", [], "'gpu'"),
        (INFO, "gpu.vram_mib", None, "gpu: field 'vram_mib'"),
        (INFO, "gpu.count", 0, "gpu: field 'count'"),
        (INFO, "api_url", None, "'api_url'"),
        (INFO, "chain_address", "0x" + "g" * 40, "'chain_address'"),
        (INFO, "version", "", "'version'"),
        (INFO, "chain_id", 0, "'chain_id'"),
        (TokenFrame(("a",), 1), "pieces", "a", "'pieces'"),
        (TokenFrame(("a",), 1), "pieces", ["a", 1], "'pieces[1]'"),
        (TokenFrame(("a",), 1), "pieces", ["a"] * 5000, "'pieces'"),
        (TokenFrame(("a",), 1), "tokens", -1, "'tokens'"),
        (EndFrame(1, 1, "stop"), "finish_reason", "Stop!", "'finish_reason'"),
        (EndFrame(1, 1, "stop"), "completion_tokens", None, "'completion_tokens'"),
        (EndFrame(1, 1, "stop"), "receipt", [1], "'receipt'"),
        (ErrorFrame("busy", "x"), "code", "", "'code'"),
        (ErrorFrame("busy", "x"), "message", "x" * 1001, "'message'"),
    ],
)
def test_refusals_name_the_field(message: Any, path: str, value: Any, named: str) -> None:
    parser = dict((type(m), p) for m, p in ALL)[type(message)]
    with pytest.raises(MalformedFrame) as err:
        parser(_set(message.to_frame(), path, value))
    assert named in str(err.value)


@pytest.mark.parametrize("frame", [None, [], "info", 3])
def test_non_dicts_are_malformed(frame: Any) -> None:
    for parser in PARSERS:
        with pytest.raises(MalformedFrame):
            parser(frame)


def test_job_reply_dispatch() -> None:
    for message, _ in ALL[3:]:
        assert parse_job_reply(message.to_frame()) == message
    for bad in ({"v": 1, "t": "job_request"}, {"v": 1, "t": ["tokens"]}, {"v": 1}):
        with pytest.raises(MalformedFrame, match="'t'"):
            parse_job_reply(bad)


def test_error_frame_helper() -> None:
    frame = error_frame(ErrorCode.BUSY, "x" * 5000 + "\ud800")
    assert parse_error(wire(frame)) == ErrorFrame("busy", "x" * MAX_MESSAGE_CHARS)
    assert parse_error(wire(error_frame("timeout", "bad \ud800 text"))).message == "bad ? text"
    with pytest.raises(ValueError, match="identifier"):
        error_frame("Not A Code", "x")


def test_error_frame_for_framing_failures() -> None:
    assert error_frame_for(FrameTooLarge(5, 2))["code"] == ErrorCode.FRAME_TOO_LARGE
    assert error_frame_for(MalformedFrame("bad"))["code"] == ErrorCode.MALFORMED
    assert error_frame_for(TruncatedFrame("cut"))["message"] == "cut"


# -- hypothesis --------------------------------------------------------------------------------

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from([1, "info", "job_request", "tokens", "end", "error", TOKEN, 2**300]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(
    ["v", "t", "models", "gpu", "capacity", "api_url", "chain_address", "version", "chain_id",
     "job_id", "session_id", "model_id", "prompt", "max_tokens", "temperature", "seed", "auth",
     "pieces", "tokens", "prompt_tokens", "completion_tokens", "finish_reason", "receipt",
     "code", "message", "models.0.id", "models.0.price_per_million", "capacity.max_jobs",
     "gpu.count"]
)  # fmt: skip


def _check(parser: Callable[[Any], object], frame: Any) -> None:
    with contextlib.suppress(MalformedFrame):
        parser(frame)


@FAST
@given(frame=st.dictionaries(st.text(max_size=12) | keys, anything, max_size=8) | anything)
def test_random_input_gives_a_model_or_malformed(frame: Any) -> None:
    for parser in PARSERS:
        _check(parser, frame)


@FAST
@given(
    index=st.integers(0, len(ALL) - 1),
    edits=st.lists(st.tuples(keys, anything | st.just(...)), min_size=1, max_size=3),
)
def test_mutated_valid_frames_give_a_model_or_malformed(
    index: int, edits: list[tuple[str, Any]]
) -> None:
    message, parser = ALL[index]
    frame = message.to_frame()
    for path, value in edits:
        try:
            frame = _set(frame, path, value)
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # the path does not exist in this frame
    _check(parser, frame)
    _check(parse_job_reply, frame)


@FAST
@given(
    job=st.builds(
        JobRequest,
        model_id=st.text(min_size=1, max_size=20),
        prompt=st.text(min_size=1, max_size=50),
        max_tokens=st.integers(1, 4096),
        job_id=st.text(min_size=1, max_size=20),
        temperature=st.none() | st.floats(0.0, 2.0),
        seed=st.none() | st.integers(0, 2**32 - 1),
        auth=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    )
)
def test_generated_job_requests_round_trip(job: JobRequest) -> None:
    assert parse_job_request(wire(job.to_frame())) == job
