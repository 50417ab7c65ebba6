"""Errors of the transaction sender: each message says what happened, why, and what to do."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp
from web3.exceptions import ProviderConnectionError, RequestTimedOut

CRASH_ENV = "FABSTIR_CRASH_AT"
T = TypeVar("T")


class TxError(RuntimeError):
    """A transaction could not be previewed, sent or confirmed; the text is for the operator."""


class FeeCapError(TxError):
    """The operator's fee cap is below what the network needs right now."""


class TxRevertedError(TxError):
    """The call would revert (estimate or simulation); `reason` is the decoded revert."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TxRejectedError(TxError):
    """The node certainly refused the signed transaction; the journal row is marked dropped."""

    def __init__(self, message: str, tx_hash: str, reason: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash
        self.reason = reason


class TxBroadcastUncertain(TxError):
    """The broadcast broke off mid-way: the node may hold the transaction. It stays journaled
    as pending; `wait` or the next `start` confirms or rebroadcasts it."""

    def __init__(self, message: str, tx_hash: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class TxTimeoutError(TxError):
    """No receipt within the time limit; the transaction stays journaled as pending."""

    def __init__(self, message: str, tx_hash: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class TxFailedError(TxError):
    """A mined transaction failed (status 0); `reason` is the replayed revert."""

    def __init__(self, message: str, tx_hash: str, reason: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash
        self.reason = reason


class RpcUnavailableError(TxError):
    """The chain RPC cannot be reached or broke off: a network problem, not a chain answer."""


class CrashPointReached(BaseException):
    """Tests only: the process 'dies' at a named point (FABSTIR_CRASH_AT). A BaseException so
    that no `except Exception` on the way up can swallow the simulated crash."""


def crash_point(name: str) -> None:
    """Die here when FABSTIR_CRASH_AT names this point (DESIGN §11.12)."""
    if os.environ.get(CRASH_ENV) == name:
        raise CrashPointReached(f"{CRASH_ENV}={name}")


# Transport failures: the request may or may not have reached the node.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
    ProviderConnectionError,
    RequestTimedOut,
)


def never_reached_node(exc: BaseException) -> bool:
    """True when the request certainly never left us (no connection was made)."""
    return isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError)


def describe_transport_error(exc: BaseException) -> str:
    """A short 'why' for a transport failure: refused, timed out, reset, unknown host."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing is listening there)"
        return f"cannot connect ({cause.strerror or cause})"
    if isinstance(exc, asyncio.TimeoutError | RequestTimedOut):
        return "the request timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing is listening there)"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def rpc_unavailable(url: str, doing: str, exc: BaseException) -> RpcUnavailableError:
    """The readable error for a dropped or dead RPC connection."""
    return RpcUnavailableError(
        f"cannot reach the chain RPC at {url} while {doing}: {describe_transport_error(exc)}. "
        "Check that the node or provider is up and that chain.rpc_urls is right; "
        "journaled transactions are kept and resumed on the next start."
    )


async def guarded(url: str, doing: str, awaitable: Awaitable[T]) -> T:
    """Await an RPC call; a transport failure becomes a readable RpcUnavailableError."""
    try:
        return await awaitable
    except TRANSPORT_ERRORS as exc:
        raise rpc_unavailable(url, doing, exc) from exc
