"""Errors of the transaction sender: each message says what happened, why, and what to do."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import Literal, TypeVar

import aiohttp
from web3.exceptions import ProviderConnectionError, RequestTimedOut, Web3RPCError

CRASH_ENV = "FABSTIR_CRASH_AT"
T = TypeVar("T")
Answer = Literal["nonce_used", "rejected", "uncertain"]


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
    """The broadcast broke off mid-way or got an answer that is not a known refusal: the node
    may hold the transaction. It stays journaled as pending, its nonce kept; `wait` or the
    next `start` confirms or rebroadcasts it."""

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


# JSON-RPC answers to eth_sendRawTransaction that certainly mean "not taken": the node
# checked the transaction itself and refused it (geth, op-geth, reth, anvil and Nethermind
# wording, lower-cased). Any other error answer is uncertain: a load balancer's -32603
# "internal error", a -32005 "limit exceeded" or a "request timed out" may come back after a
# backend took the transaction, so its nonce is kept and the journal row stays pending.
CERTAIN_REJECTIONS: tuple[str, ...] = (
    "insufficient funds",  # geth, anvil ("Insufficient funds for gas * price + value")
    "insufficientfunds",  # Nethermind
    "less than block base fee",  # geth, anvil ("max fee per gas less than block base fee")
    "fee cap too low",
    "fee too low",
    "feetoolow",  # Nethermind
    "underpriced",  # "transaction underpriced", "replacement transaction underpriced"
    "max priority fee per gas higher than max fee per gas",
    "intrinsic gas too low",
    "intrinsic gas too high",  # anvil: tx.gas_limit > env.block.gas_limit
    "exceeds block gas limit",
    "gaslimitexceeded",  # Nethermind
    "invalid sender",
    "invalid signature",
    "invalid chain id",  # "invalid chain id for signer"
    "only replay-protected",
    "exceeds the configured cap",  # geth's rpc.txfeecap
    "oversized data",
    "transaction type not supported",
)
_NONCE_USED = ("nonce too low", "oldnonce")  # geth/anvil/reth, Nethermind


def classify_rejection(message: str, replacement: bool) -> Answer:
    """What a JSON-RPC error answer to eth_sendRawTransaction says about the transaction:
    "nonce_used" (another transaction holds the nonce), "rejected" (certainly refused, see
    CERTAIN_REJECTIONS) or "uncertain" (anything else: the node may hold it)."""
    low = message.lower()
    if "timeout" in low or "timed out" in low:
        return "uncertain"
    if any(marker in low for marker in _NONCE_USED):
        return "nonce_used"
    if "replacement" in low and not replacement:  # a transaction we never saw holds the nonce
        return "nonce_used"
    if any(marker in low for marker in CERTAIN_REJECTIONS):
        return "rejected"
    return "uncertain"


def error_code(exc: Web3RPCError) -> int | None:
    """The JSON-RPC error code of an error answer, when it has one."""
    error = (exc.rpc_response or {}).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) else None


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
