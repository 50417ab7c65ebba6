"""Typed messages of `/fabstir/info/1.0.0` and `/fabstir/job/1.0.0` (DESIGN §5, §11.6).

Every frame is a JSON object with ``"v": 1`` and a type tag ``"t"``. Parsing is strict about
what it reads (types, ranges, lengths; bools are not ints) and lenient about what it does not:
unknown keys are ignored, so optional fields can be added without a version bump. A ``v``
other than 1 is refused: a breaking change gets a new protocol id and a new ``v``.
Optional fields are left out of the frame when they are None, to keep frames small.
Every ``parse_*`` raises only ``MalformedFrame``, with a message that names the field.

info:  client → ``info_request``; host → ``info``.
job:   client → ``job_request``; host → ``tokens``* then ``end`` or ``error``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Final

from fabstir_tui.engine.p2p.frames import FrameError, FrameTooLarge, MalformedFrame

VERSION: Final = 1
INFO_PROTOCOL: Final = "/fabstir/info/1.0.0"
JOB_PROTOCOL: Final = "/fabstir/job/1.0.0"

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 256
MAX_URL_CHARS = 2048
MAX_MESSAGE_CHARS = 1000
MAX_MODELS = 256
MAX_PIECES = 4096
MAX_TOKENS_LIMIT = 1 << 20
MAX_TEMPERATURE = 2.0
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class ErrorCode:
    """Error frame codes a client can act on; any short lowercase identifier parses."""

    FRAME_TOO_LARGE: Final = "frame_too_large"
    MALFORMED: Final = "malformed"
    TIMEOUT: Final = "timeout"
    UNAUTHORIZED: Final = "unauthorized"
    MODEL_NOT_SERVED: Final = "model_not_served"
    BUSY: Final = "busy"
    INTERNAL: Final = "internal"


# -- field readers: each names the field it refuses ------------------------------------------


def _obj(frame: Any, t: str) -> dict[str, Any]:
    if not isinstance(frame, dict):
        raise MalformedFrame(f"{t} frame must be an object, not {type(frame).__name__}")
    v = frame.get("v")
    if isinstance(v, bool) or not isinstance(v, int) or v != VERSION:
        raise MalformedFrame(f"field 'v': unsupported version {v!r} (want {VERSION})")
    if frame.get("t") != t:
        raise MalformedFrame(f"field 't': expected {t!r}, got {frame.get('t')!r}")
    return frame


def _str(d: dict[str, Any], name: str, max_chars: int, *, empty: bool = False) -> str:
    value = d.get(name)
    if not isinstance(value, str):
        raise MalformedFrame(f"field {name!r}: expected a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise MalformedFrame(f"field {name!r}: longer than {max_chars} characters")
    if not empty and not value:
        raise MalformedFrame(f"field {name!r}: must not be empty")
    return value


def _opt_str(d: dict[str, Any], name: str, max_chars: int) -> str | None:
    return None if d.get(name) is None else _str(d, name, max_chars)


def _int(d: dict[str, Any], name: str, lo: int, hi: int) -> int:
    value = d.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedFrame(f"field {name!r}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise MalformedFrame(f"field {name!r}: {value} is outside [{lo}, {hi}]")
    return value


def _opt_int(d: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    return None if d.get(name) is None else _int(d, name, lo, hi)


def _opt_float(d: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = d.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedFrame(f"field {name!r}: expected a number, got {type(value).__name__}")
    number = float(value) if isinstance(value, float) or abs(value) < 2**53 else math.inf
    if not (math.isfinite(number) and lo <= number <= hi):
        raise MalformedFrame(f"field {name!r}: {value!r} is outside [{lo}, {hi}]")
    return number


def _opt_dict(d: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = d.get(name)
    if value is not None and not isinstance(value, dict):
        raise MalformedFrame(f"field {name!r}: expected an object, got {type(value).__name__}")
    return value


def _list(d: dict[str, Any], name: str, max_items: int) -> list[Any]:
    value = d.get(name)
    if not isinstance(value, list):
        raise MalformedFrame(f"field {name!r}: expected a list, got {type(value).__name__}")
    if len(value) > max_items:
        raise MalformedFrame(f"field {name!r}: more than {max_items} items")
    return value


def _address(d: dict[str, Any], name: str) -> str:
    value = _str(d, name, 42, empty=True)
    if value and not _ADDRESS.fullmatch(value):
        raise MalformedFrame(f"field {name!r}: not a 0x-prefixed 20-byte hex address")
    return value


def _code(d: dict[str, Any], name: str) -> str:
    value = _str(d, name, 32)
    if not _CODE.fullmatch(value):
        raise MalformedFrame(f"field {name!r}: not a lowercase identifier")
    return value


def _nested(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise MalformedFrame(f"field {where!r}: expected an object, got {type(item).__name__}")
    return item


def _reraise_in(where: str, exc: MalformedFrame) -> MalformedFrame:
    return MalformedFrame(f"{where}: {exc}")


def _wire(value: Any) -> Any:
    """Dataclasses to dicts (None fields left out), tuples to lists; other values as they are."""
    if is_dataclass(value) and not isinstance(value, type):
        pairs = ((f.name, getattr(value, f.name)) for f in fields(value))
        return {name: _wire(item) for name, item in pairs if item is not None}
    if isinstance(value, tuple):
        return [_wire(item) for item in value]
    return value


class _Frame:
    """A top-level message: its wire dict is ``v``, its tag ``t`` and its fields that are set."""

    __slots__ = ()
    T: ClassVar[str] = ""

    def to_frame(self) -> dict[str, Any]:
        """The dict to hand to ``encode_frame``."""
        body: dict[str, Any] = _wire(self)
        return {"v": VERSION, "t": self.T, **body}


# -- info --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InfoRequest(_Frame):
    """Ask a host for its info; a frame of its own so a kept stream can ask again."""

    T: ClassVar[str] = "info_request"


@dataclass(frozen=True, slots=True)
class ModelOffer:
    """One served model and its price: per million tokens of ``price_token`` (an ERC-20)."""

    id: str
    name: str
    price_per_million: int
    price_token: str


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What a client needs to judge the hardware: model name, memory, how many."""

    name: str
    vram_mib: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class Capacity:
    """How busy the host is, so a client can pick a host with room."""

    max_jobs: int
    active_jobs: int
    queued_jobs: int = 0


@dataclass(frozen=True, slots=True)
class InfoResponse(_Frame):
    """The host's answer on the info protocol: what it serves, at what price, where."""

    T: ClassVar[str] = "info"

    models: tuple[ModelOffer, ...]
    capacity: Capacity
    api_url: str
    chain_address: str
    version: str
    gpu: GpuInfo | None = None
    chain_id: int | None = None


def parse_info_request(frame: Any) -> InfoRequest:
    """An info request, or MalformedFrame."""
    _obj(frame, "info_request")
    return InfoRequest()


def _parse_offer(item: Any, where: str) -> ModelOffer:
    d = _nested(item, where)
    try:
        return ModelOffer(
            id=_str(d, "id", MAX_ID_CHARS),
            name=_str(d, "name", MAX_TEXT_CHARS, empty=True),
            price_per_million=_int(d, "price_per_million", 0, 2**256 - 1),
            price_token=_address(d, "price_token"),
        )
    except MalformedFrame as exc:
        raise _reraise_in(where, exc) from None


def parse_info(frame: Any) -> InfoResponse:
    """An info response, or MalformedFrame naming the bad field."""
    d = _obj(frame, "info")
    models = tuple(
        _parse_offer(item, f"models[{i}]") for i, item in enumerate(_list(d, "models", MAX_MODELS))
    )
    cap = _nested(d.get("capacity"), "capacity")
    gpu_d = d.get("gpu")
    try:
        capacity = Capacity(
            max_jobs=_int(cap, "max_jobs", 0, 1 << 20),
            active_jobs=_int(cap, "active_jobs", 0, 1 << 20),
            queued_jobs=_int(cap, "queued_jobs", 0, 1 << 30),
        )
    except MalformedFrame as exc:
        raise _reraise_in("capacity", exc) from None
    gpu = None
    if gpu_d is not None:
        g = _nested(gpu_d, "gpu")
        try:
            gpu = GpuInfo(
                name=_str(g, "name", MAX_TEXT_CHARS),
                vram_mib=_int(g, "vram_mib", 0, 1 << 40),
                count=_int(g, "count", 1, 1 << 10),
            )
        except MalformedFrame as exc:
            raise _reraise_in("gpu", exc) from None
    return InfoResponse(
        models=models,
        capacity=capacity,
        api_url=_str(d, "api_url", MAX_URL_CHARS, empty=True),
        chain_address=_address(d, "chain_address"),
        version=_str(d, "version", MAX_TEXT_CHARS),
        gpu=gpu,
        chain_id=_opt_int(d, "chain_id", 1, 2**63 - 1),
    )


# -- job ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRequest(_Frame):
    """One inference request: for an on-chain job or a session, exactly one of the two ids.

    ``auth`` is the DESIGN §11.6 signed ``JobRequest`` (EIP-712) in request_auth.py's wire
    form, opaque here: the job protocol verifies it, this module only checks it is an object.
    """

    T: ClassVar[str] = "job_request"

    model_id: str
    prompt: str
    max_tokens: int
    job_id: str | None = None
    session_id: str | None = None
    temperature: float | None = None
    seed: int | None = None
    auth: dict[str, Any] | None = field(default=None, hash=False)


def parse_job_request(frame: Any) -> JobRequest:
    """A job request, or MalformedFrame naming the bad field."""
    d = _obj(frame, "job_request")
    job_id = _opt_str(d, "job_id", MAX_ID_CHARS)
    session_id = _opt_str(d, "session_id", MAX_ID_CHARS)
    if (job_id is None) == (session_id is None):
        raise MalformedFrame("fields 'job_id'/'session_id': exactly one must be given")
    return JobRequest(
        job_id=job_id,
        session_id=session_id,
        model_id=_str(d, "model_id", MAX_ID_CHARS),
        prompt=_str(d, "prompt", 1 << 20),
        max_tokens=_int(d, "max_tokens", 1, MAX_TOKENS_LIMIT),
        temperature=_opt_float(d, "temperature", 0.0, MAX_TEMPERATURE),
        seed=_opt_int(d, "seed", 0, 2**32 - 1),
        auth=_opt_dict(d, "auth"),
    )


@dataclass(frozen=True, slots=True)
class TokenFrame(_Frame):
    """A batch of generated text (sent every ≤ 50 ms) and how many tokens it holds."""

    T: ClassVar[str] = "tokens"

    pieces: tuple[str, ...]
    tokens: int

    @property
    def text(self) -> str:
        """The batch as one string."""
        return "".join(self.pieces)


@dataclass(frozen=True, slots=True)
class QueuedFrame(_Frame):
    """The request waits for an inference slot; `position` 1 runs next (DESIGN §11.10). Sent
    when the position changes and every few seconds while it waits."""

    T: ClassVar[str] = "queued"

    position: int


def parse_queued(frame: Any) -> QueuedFrame:
    """A queue position, or MalformedFrame naming the bad field."""
    d = _obj(frame, "queued")
    return QueuedFrame(position=_int(d, "position", 1, 1 << 30))


def parse_tokens(frame: Any) -> TokenFrame:
    """A token batch, or MalformedFrame naming the bad field."""
    d = _obj(frame, "tokens")
    pieces = _list(d, "pieces", MAX_PIECES)
    for i, piece in enumerate(pieces):
        if not isinstance(piece, str):
            raise MalformedFrame(f"field 'pieces[{i}]': expected a string")
    return TokenFrame(pieces=tuple(pieces), tokens=_int(d, "tokens", 0, MAX_TOKENS_LIMIT))


@dataclass(frozen=True, slots=True)
class EndFrame(_Frame):
    """The last frame of a successful job: usage for billing and, later, the receipt."""

    T: ClassVar[str] = "end"

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    receipt: dict[str, Any] | None = field(default=None, hash=False)


def parse_end(frame: Any) -> EndFrame:
    """An end frame, or MalformedFrame naming the bad field."""
    d = _obj(frame, "end")
    return EndFrame(
        prompt_tokens=_int(d, "prompt_tokens", 0, 1 << 30),
        completion_tokens=_int(d, "completion_tokens", 0, MAX_TOKENS_LIMIT),
        finish_reason=_code(d, "finish_reason"),
        receipt=_opt_dict(d, "receipt"),
    )


@dataclass(frozen=True, slots=True)
class ErrorFrame(_Frame):
    """Why the host refused or stopped: the last frame before it closes the stream."""

    T: ClassVar[str] = "error"

    code: str
    message: str


def parse_error(frame: Any) -> ErrorFrame:
    """An error frame, or MalformedFrame naming the bad field."""
    d = _obj(frame, "error")
    return ErrorFrame(
        code=_code(d, "code"), message=_str(d, "message", MAX_MESSAGE_CHARS, empty=True)
    )


def error_frame(code: str, message: str) -> dict[str, Any]:
    """A ready-to-encode error frame; the message is cut to fit, a bad code is our bug."""
    if not _CODE.fullmatch(code):
        raise ValueError(f"error code {code!r} is not a lowercase identifier")
    text = message[:MAX_MESSAGE_CHARS].encode("utf-8", "replace").decode("utf-8")
    return ErrorFrame(code=code, message=text).to_frame()


def error_frame_for(exc: FrameError) -> dict[str, Any]:
    """The error frame that answers a framing failure from the peer."""
    code = ErrorCode.FRAME_TOO_LARGE if isinstance(exc, FrameTooLarge) else ErrorCode.MALFORMED
    return error_frame(code, str(exc))


JobReply = TokenFrame | EndFrame | ErrorFrame | QueuedFrame
_REPLIES: dict[str, Callable[[Any], JobReply]] = {
    "queued": parse_queued,
    "tokens": parse_tokens,
    "end": parse_end,
    "error": parse_error,
}


def parse_job_reply(frame: Any) -> JobReply:
    """What a client reads on the job stream: tokens, end or error, by the ``t`` tag."""
    t = frame.get("t") if isinstance(frame, dict) else None
    parser = _REPLIES.get(t) if isinstance(t, str) else None
    if parser is None:
        raise MalformedFrame(f"field 't': {t!r} is not a job reply (queued, tokens, end, error)")
    return parser(frame)
