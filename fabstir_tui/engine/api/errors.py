"""Every refusal the HTTP API gives is one JSON shape (OpenAI's), with a code a client can act
on and a sentence a person can read — never a stack trace."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# OpenAI's error `type` for each HTTP status we use; clients switch on it.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_unavailable",
}


class ApiError(Exception):
    """A refusal on its way to the client: raised anywhere below a handler."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    """The JSON body of a refusal (also sent as an SSE event once a stream has begun)."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"code": code, "message": message, "type": kind}}


def error_response(error: ApiError) -> web.Response:
    """The refusal as an HTTP response."""
    return web.json_response(
        error_body(error.status, error.code, error.message),
        status=error.status,
        headers=error.headers,
    )


# The pipeline's and the job protocol's refusal codes, as HTTP statuses.
REFUSAL_STATUS = {
    "malformed": 400,
    "unauthorized": 401,
    "not_claimed": 403,
    "already_delivered": 403,
    "deadline_passed": 403,
    "prompt_mismatch": 403,
    "model_not_served": 404,
    "busy": 409,
    "timeout": 408,
    "internal": 500,
}


def refusal(code: str, message: str) -> ApiError:
    """An engine refusal (code + sentence) as the HTTP error it maps to."""
    return ApiError(REFUSAL_STATUS.get(code, 403), code, message)
