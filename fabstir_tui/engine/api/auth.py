"""Who may use the HTTP API (DESIGN §11.6): a paid request carries the job poster's signed
request (`Authorization: Fabstir <base64url JSON>`) and gets exactly the P2P job protocol's
checks; the operator's own tests use `Authorization: Bearer <FABSTIR_API_KEY>` for free.

The job (or session) id travels in the body (`job_id` / `session_id`) or in the
`X-Fabstir-Job` / `X-Fabstir-Session` header; the body wins when both are given. A paid
request must be `/v1/completions` with the plain prompt whose keccak256 the client posted:
there is no agreed hash of a chat transcript yet, so a paid chat request is refused.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.api.errors import ApiError, refusal
from fabstir_tui.engine.jobs.runs import Refusal, Replay, RunTicket
from fabstir_tui.engine.p2p.request_auth import AuthReason, AuthRefused, auth_from_header

if TYPE_CHECKING:
    from fabstir_tui.engine.api.shapes import Ask
    from fabstir_tui.engine.p2p.messages import JobRequest
    from fabstir_tui.engine.serving.runner import RequestRunner

API_KEY_ENV = "FABSTIR_API_KEY"
# Signed by someone, but not for this job, this host or by its poster: forbidden, not unknown.
_FORBIDDEN = frozenset({AuthReason.WRONG_SIGNER, AuthReason.WRONG_REQUEST, AuthReason.WRONG_HOST})


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the Authorization header proved: the operator's key, or a paid request's auth."""

    paid_auth: dict[str, Any] | None  # None: the operator (free)


def credentials(header: str | None, api_key: str | None) -> Credentials:
    """The caller's credentials, or a 401 saying what is missing or wrong."""
    if not header:
        raise ApiError(
            401,
            "missing_authorization",
            "this API needs 'Authorization: Fabstir <signed request>' for a job you posted, "
            "or the operator's 'Authorization: Bearer <key>'",
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        if not api_key:
            raise ApiError(
                401,
                "operator_mode_off",
                f"operator mode is off: the node was started without {API_KEY_ENV}",
            )
        # surrogatepass: a non-ASCII header or a JSON lone surrogate is a wrong key, not a 500
        given = token.strip().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, api_key.encode("utf-8", "surrogatepass")):
            raise ApiError(401, "invalid_api_key", "the API key is not this node's")
        return Credentials(paid_auth=None)
    if scheme == "Fabstir":
        try:
            return Credentials(paid_auth=auth_from_header(header))
        except AuthRefused as exc:
            raise ApiError(401, f"auth_{exc.reason}", str(exc)) from None
    raise ApiError(
        401, "unsupported_authorization", f"unknown Authorization scheme {scheme[:20]!r}"
    )


def paid_shape(ask: Ask) -> None:
    """A paid request must name its job or session and send the prompt that was posted."""
    if ask.kind == "chat":
        raise ApiError(
            400,
            "paid_chat_unsupported",
            "paid requests use POST /v1/completions with the plain prompt whose keccak256 "
            "was posted with the job; chat is served only in operator mode for now",
        )
    if ask.stop:
        raise ApiError(
            400,
            "paid_stop_unsupported",
            "a paid run's receipt signs its sampler settings and stop strings are not among "
            "them yet (a verifier could not re-run it); send the request without 'stop'",
        )
    if (ask.job_id is None) == (ask.session_id is None):
        raise ApiError(
            400,
            "missing_job_id",
            "a signed request needs exactly one of 'job_id' / 'session_id' (body) or "
            "X-Fabstir-Job / X-Fabstir-Session (header)",
        )


async def admit_paid(runner: RequestRunner, request: JobRequest) -> RunTicket | Replay:
    """The pipeline's verdict (claimed by us, model, deadline, prompt hash) and then the
    signature by the job's poster: the same checks, in the same order, as the P2P path.
    A Replay: the job was delivered already and its archived answer is sent again."""
    jobs = runner.node.jobs
    if jobs is None:
        raise ApiError(
            403,
            "pipeline_off",
            "this node takes no paid requests: its job pipeline is off (no market or no key)",
        )
    checked = jobs.runs.check(request)
    if isinstance(checked, Refusal):
        raise refusal(checked.code, checked.message)
    expected = jobs.runs.expected_signer(checked)
    try:
        await asyncio.to_thread(runner.check_auth, request, expected)
    except AuthRefused as exc:
        status = 403 if exc.reason in _FORBIDDEN else 401
        raise ApiError(status, f"auth_{exc.reason}", f"auth refused: {exc}") from None
    return checked
