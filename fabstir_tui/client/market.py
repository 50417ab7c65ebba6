"""The client side of an open marketplace job (DESIGN §3): post it with its escrow, wait for a
host to claim it, find that host's P2P address in the NodeRegistry, send it the signed prompt,
check its receipt, and accept the result early if the client wishes.

Used by the demo's simulated clients, the jobs bench and real clients. Everything is async
over an `AsyncWeb3` (HTTP) and signed locally by the client's own key; each failure is a
`MarketError` that says what failed, why, and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import TimeExhausted, Web3Exception
from web3.logs import DISCARD

from fabstir_tui.client.p2p import P2PClientError, P2PRefused
from fabstir_tui.client.p2p_job import P2PClient
from fabstir_tui.engine.chain.artifacts import load_artifact
from fabstir_tui.engine.chain.reverts import default_decoder, rpc_error_message
from fabstir_tui.engine.chain.rpc_pool import OwnSessionHTTPProvider
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest, TokenFrame
from fabstir_tui.engine.p2p.request_auth import AuthDomain, prompt_hash, sign_request
from fabstir_tui.engine.proofs import ReceiptError, parse_receipt, verify_receipt

ETH: Final = "0x0000000000000000000000000000000000000000"
TX_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.5
BUSY_RETRIES: Final = 20  # the host saw the claim on-chain before its own receipt: retry
REQUEST_TTL_S: Final = 300  # the signed request's expiry (the host allows at most 600 s)
# JobMarketplace.JobStatus, in declaration order.
JOB_STATUS: Final = (
    "none",
    "open",
    "claimed",
    "submitted",
    "challenged",
    "released",
    "refunded",
    "cancelled",
    "expired",
)


class MarketError(Exception):
    """A client step failed: `what` failed, `why`, and what to do about it."""

    def __init__(self, what: str, why: str, fix: str) -> None:
        super().__init__(f"{what}: {why}; {fix}")
        self.what = what
        self.why = why
        self.fix = fix


@dataclass(frozen=True, slots=True)
class JobRun:
    """A job the host ran for us: its text, usage, and the receipt's checked signer."""

    text: str
    end: EndFrame
    receipt_signer: str


def client_web3(rpc_url: str, timeout_s: float = 30.0) -> AsyncWeb3[Any]:
    """An AsyncWeb3 with its own HTTP session (web3's shared session cache can deadlock when a
    request is cancelled; see rpc_pool.OwnSessionHTTPProvider). Close with `close_web3`."""
    provider = OwnSessionHTTPProvider(
        rpc_url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout_s)},
        exception_retry_configuration=None,
    )
    return AsyncWeb3(provider)


async def close_web3(w3: AsyncWeb3[Any]) -> None:
    """Close the session `client_web3` opened."""
    provider = w3.provider
    if isinstance(provider, OwnSessionHTTPProvider):
        await provider.close_session()


def contract(w3: AsyncWeb3[Any], name: str, address: str) -> Any:
    """One of our contracts by artifact name at `address`."""
    checksum = AsyncWeb3.to_checksum_address(address)
    return w3.eth.contract(address=checksum, abi=load_artifact(name).abi)


# What an unreachable or slow RPC endpoint raises under web3's async HTTP provider.
RPC_DOWN = (OSError, aiohttp.ClientError, TimeoutError)
RPC_FIX = "check that the chain's RPC endpoint is up, then retry"


def _reason(exc: BaseException, name: str | None = None) -> str:
    return default_decoder().from_exception(exc, name) or rpc_error_message(exc)


async def send(
    w3: AsyncWeb3[Any], account: LocalAccount, call: Any, what: str, *, value: int = 0
) -> Any:
    """Estimate, sign locally, send and wait for one call; its receipt, or MarketError."""
    fix = "check the arguments and the account's balances, then post again"
    try:
        nonce = await w3.eth.get_transaction_count(account.address, "pending")
        tx = await call.build_transaction({"from": account.address, "value": value, "nonce": nonce})
    except Web3Exception as exc:
        raise MarketError(what, f"the chain refuses it: {_reason(exc)}", fix) from None
    except RPC_DOWN as exc:
        raise MarketError(what, f"the RPC endpoint failed ({exc!r})", RPC_FIX) from None
    signed = account.sign_transaction(tx)
    try:
        tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=TX_TIMEOUT_S)
    except TimeExhausted:
        raise MarketError(
            what,
            f"not mined in {TX_TIMEOUT_S:g} s",
            "the chain may be stalled or the fee too low; look the transaction up later",
        ) from None
    except Web3Exception as exc:
        raise MarketError(what, f"the node refused it: {rpc_error_message(exc)}", fix) from None
    except RPC_DOWN as exc:
        raise MarketError(what, f"the RPC endpoint failed ({exc!r})", RPC_FIX) from None
    if receipt["status"] != 1:
        raise MarketError(what, f"reverted in transaction 0x{bytes(tx_hash).hex()}", fix)
    return receipt


def escrow_for(max_tokens: int, max_price_per_million: int) -> int:
    """The escrow that covers a job at the client's maximum price (rounded up)."""
    return -(-max_tokens * max_price_per_million // 1_000_000)


async def post_job(
    w3: AsyncWeb3[Any],
    account: LocalAccount,
    market_address: str,
    *,
    model_id: str,
    prompt: str,
    max_tokens: int,
    max_price_per_million: int,
    ttl_s: int,
    token: str,
    escrow: int,
) -> int:
    """Post an open job with its escrow (an ERC20 is approved first; ETH goes as value); the
    job id from the JobPosted event. `model_id` is the 0x SHA-256 of the GGUF."""
    market = contract(w3, "JobMarketplace", market_address)
    raw_model = bytes.fromhex(model_id.removeprefix("0x"))
    if len(raw_model) != 32:
        raise MarketError(
            "posting a job", f"model id {model_id!r} is not a SHA-256", "pass 64 hex digits"
        )
    if token.lower() != ETH:
        erc20 = contract(w3, "FabstirTestToken", token)
        approve = erc20.functions.approve(market.address, escrow)
        await send(w3, account, approve, f"approving {escrow} units of {token} as escrow")
    try:
        latest = await w3.eth.get_block("latest")
    except RPC_DOWN as exc:
        why = f"the RPC endpoint failed ({exc!r})"
        raise MarketError("posting a job", why, RPC_FIX) from None
    deadline = int(latest["timestamp"]) + ttl_s  # chain time: a devnet's clock may run ahead
    call = market.functions.postJob(
        raw_model,
        bytes.fromhex(prompt_hash(prompt).removeprefix("0x")),
        max_tokens,
        max_price_per_million,
        deadline,
        AsyncWeb3.to_checksum_address(token),
        escrow,
    )
    value = escrow if token.lower() == ETH else 0
    receipt = await send(w3, account, call, "posting a job", value=value)
    events = market.events.JobPosted().process_receipt(receipt, errors=DISCARD)  # + Transfer
    if not events:
        raise MarketError(
            "posting a job",
            "the transaction was mined but logged no JobPosted event",
            "check that market_address is a JobMarketplace",
        )
    return int(events[0]["args"]["jobId"])


async def job_on_chain(w3: AsyncWeb3[Any], market_address: str, job_id: int) -> dict[str, Any]:
    """The marketplace's record of one job, by field name (status as a word)."""
    market = contract(w3, "JobMarketplace", market_address)
    fn = market.functions.getJob(job_id)
    names = [o["name"] for o in fn.abi["outputs"][0]["components"]]
    try:
        values = await fn.call()
    except Web3Exception as exc:
        raise MarketError(
            f"reading job {job_id}", _reason(exc, "JobMarketplace"), "check the job id"
        ) from None
    except RPC_DOWN as exc:
        why = f"the RPC endpoint failed ({exc!r})"
        raise MarketError(f"reading job {job_id}", why, RPC_FIX) from None
    record = dict(zip(names, values, strict=True))
    record["status"] = JOB_STATUS[int(record["status"])]
    return record


async def wait_status(
    w3: AsyncWeb3[Any],
    market_address: str,
    job_id: int,
    wanted: Sequence[str],
    timeout_s: float,
    waiting_for: str,
) -> dict[str, Any]:
    """Poll the job until its status is one of `wanted`; MarketError when it ends otherwise."""
    final = {"released", "refunded", "cancelled", "expired"}
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                job = await job_on_chain(w3, market_address, job_id)
                if job["status"] in wanted:
                    return job
                if job["status"] in final:
                    raise MarketError(
                        f"waiting for {waiting_for} of job {job_id}",
                        f"the job is {job['status']}",
                        "post a new job",
                    )
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise MarketError(
            f"waiting for {waiting_for} of job {job_id}",
            f"it did not happen within {timeout_s:g} s",
            "wait longer, or let the job expire and post it again",
        ) from None


async def wait_claimed(w3: AsyncWeb3[Any], market: str, job_id: int, timeout_s: float) -> str:
    """The claiming host's address once the job is claimed (or already past the claim)."""
    job = await wait_status(
        w3, market, job_id, ("claimed", "submitted", "challenged"), timeout_s, "a host's claim"
    )
    return str(job["host"])


async def host_p2p_addr(w3: AsyncWeb3[Any], node_registry: str, host: str) -> str:
    """The host's first dialable multiaddr (with /p2p/<peer id>) from its registry metadata."""
    registry = contract(w3, "NodeRegistry", node_registry)
    what = f"finding host {host}'s P2P address"
    try:
        node = await registry.functions.getNode(AsyncWeb3.to_checksum_address(host)).call()
    except Web3Exception as exc:
        raise MarketError(
            what, _reason(exc, "NodeRegistry"), "check the registry address"
        ) from None
    except RPC_DOWN as exc:
        raise MarketError(what, f"the RPC endpoint failed ({exc!r})", RPC_FIX) from None
    metadata, active = str(node[2]), bool(node[4])
    if not active:
        raise MarketError(what, "it is not registered", "the job cannot be run by this host")
    try:
        document = json.loads(metadata) if metadata else {}
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise MarketError(
            what, "its registry metadata is not a JSON object", "ask the host to fix its metadata"
        )
    peer_id = str(document.get("peer_id") or "")
    addrs = [str(a) for a in document.get("multiaddrs") or [] if isinstance(a, str) and a]
    if not peer_id or not addrs:
        missing = "peer id" if not peer_id else "multiaddrs"
        raise MarketError(
            what,
            f"its registry metadata publishes no {missing}",
            "the host must run with P2P on and publish its peer id and addresses",
        )
    addr = addrs[0]
    return addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"


async def run_job(
    p2p_client: P2PClient,
    addr: str,
    *,
    private_key: bytes | str,
    domain: AuthDomain,
    host: str,
    job_id: int,
    prompt: str,
    model_id: str,
    max_tokens: int,
    temperature: float | None = None,
    timeout_s: float = 60.0,
) -> JobRun:
    """Send the signed request for our job and collect the answer; the end frame's receipt must
    be signed by `host` (the address that claimed the job). A host still confirming its claim
    answers `busy`: the request is retried a few times."""
    what = f"running job {job_id} on {host}"
    for attempt in range(BUSY_RETRIES + 1):
        signed = sign_request(
            private_key,
            domain,
            host=host,
            prompt=prompt,
            nonce=time.time_ns(),
            expiry=int(time.time()) + REQUEST_TTL_S,
            job_id=job_id,
        )
        request = JobRequest(
            model_id=model_id,
            prompt=prompt,
            max_tokens=max_tokens,
            job_id=str(job_id),
            temperature=temperature,
            auth=signed.to_wire(),
        )
        pieces: list[str] = []
        end: EndFrame | None = None
        try:
            stream = p2p_client.job(addr, request, timeout_s=timeout_s)
            async with contextlib.aclosing(stream):
                async for event in stream:
                    if isinstance(event, TokenFrame):
                        pieces.extend(event.pieces)
                    elif isinstance(event, EndFrame):
                        end = event  # a QueuedFrame only says where it waits
        except P2PRefused as exc:
            if exc.code == "busy" and attempt < BUSY_RETRIES:
                await asyncio.sleep(1.0)
                continue
            why = f"the host refused: {exc.code}: {exc.reason}"
            raise MarketError(what, why, _fix(exc.code)) from None
        except P2PClientError as exc:
            raise MarketError(what, str(exc), "check that the host is online, then retry") from None
        return JobRun("".join(pieces), *_checked(end, domain, host, what))
    raise AssertionError("unreachable")


def _fix(code: str) -> str:
    return {
        "busy": "the host is still busy with it; retry in a few seconds",
        "prompt_mismatch": "send exactly the prompt whose keccak256 was posted",
        "unauthorized": "sign the request with the key that posted the job",
        "not_claimed": "wait until this host has claimed the job",
        "deadline_passed": "post the job again with a later deadline",
    }.get(code, "see the host's reason")


def _checked(
    end: EndFrame | None, domain: AuthDomain, host: str, what: str
) -> tuple[EndFrame, str]:
    if end is None:
        raise MarketError(what, "the stream ended without an end frame", "retry the request")
    if end.receipt is None:
        raise MarketError(what, "the end frame carries no receipt", "challenge or do not pay")
    try:
        signer = verify_receipt(parse_receipt(end.receipt), domain, expected_signer=host)
    except ReceiptError as exc:
        raise MarketError(
            what, f"its receipt does not hold: {exc}", "challenge the result within the window"
        ) from None
    return end, signer


async def release_early(
    w3: AsyncWeb3[Any],
    account: LocalAccount,
    market_address: str,
    job_id: int,
    *,
    timeout_s: float = 60.0,
) -> Any:
    """Accept a submitted result at once: the client's `releasePayment` pays the host now.
    Waits (up to `timeout_s`) for the host's submit; the receipt of the release."""
    await wait_status(w3, market_address, job_id, ("submitted",), timeout_s, "the host's result")
    market = contract(w3, "JobMarketplace", market_address)
    call = market.functions.releasePayment(job_id)
    return await send(w3, account, call, f"releasing the payment of job {job_id}")
