"""The demo's marketplace: our node registered on the devnet, and simulated clients.

Once the node runs, the demo registers it (anvil's public test account #1) for the demo model
at a demo price in FUSD, with its real peer id and loopback multiaddrs in the registry
metadata, through the node's own audited chain commands. Then anvil's public test accounts
#2..#4 act as clients with the client library (client/market.py): each posts a job for the
demo model every few seconds, waits for a claim (the operator's `c`, or the auto policy),
sends the signed prompt to the claiming host over P2P, checks the receipt, and releases the
payment early about half of the time (the node releases the rest after the dispute window).
Every step is a "client" line in the node's log. Everything runs as tasks on the node's loop
and stops (cancelled and awaited) before the node does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir_tui.client.market import (
    MarketError,
    client_web3,
    close_web3,
    escrow_for,
    host_p2p_addr,
    post_job,
    release_early,
    run_job,
    wait_claimed,
)
from fabstir_tui.client.p2p import P2PClientError
from fabstir_tui.client.p2p_job import P2PClient
from fabstir_tui.commands.devnet_setup import TOKEN_DECIMALS, devnet_accounts
from fabstir_tui.engine.chain.actions import Register, registration_metadata
from fabstir_tui.engine.chain.deploy import MIN_STAKE_WEI
from fabstir_tui.engine.events import LogLevel, NodeStateChanged
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.p2p.request_auth import AuthDomain

if TYPE_CHECKING:
    from fabstir_tui.engine.node import Node

DEMO_PRICE_PER_MILLION = 250 * 10**TOKEN_DECIMALS  # 250 FUSD per million tokens
CLIENT_MAX_PRICE = 2 * DEMO_PRICE_PER_MILLION  # the clients would pay up to twice that
CLIENT_ACCOUNTS = (2, 3, 4)  # anvil's public test accounts; #0 deploys, #1 is the node
MAX_TOKENS_RANGE = (16, 48)
PAUSE_S = (3.0, 8.0)  # between one client's jobs
JOB_TTL_S = 300  # the job's deadline: time for the operator to press `c`
SUBMIT_WAIT_S = 180.0  # how long a client waits for the result it wants to accept early
HASH_WAIT_S = 600.0  # the demo model's SHA-256 (a few seconds for SmolLM2)
SETTLE_S = 10.0  # at stop: wait for the node's follower to reach the chain head
PROMPTS = (
    "Name three colours of the rainbow.",
    "What is the capital of France?",
    "Write a haiku about a graphics card.",
    "Give one tip for writing clear code.",
    "Why is the sky blue? Answer briefly.",
    "Suggest a name for a friendly robot.",
    "What does a compiler do, in one sentence?",
    "List two uses of a hash function.",
)
_DONE = frozenset({JobState.DELIVERED, JobState.SUBMITTED, JobState.CHALLENGED, JobState.RELEASED})


@dataclass(frozen=True)
class DemoMarket:
    """Where the simulated clients trade: the devnet's RPC and contracts, and the model."""

    rpc_url: str
    chain_id: int
    job_marketplace: str
    node_registry: str
    token: str
    model_path: Path


def short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def fusd(units: int) -> str:
    """Base units as FUSD text, exact (6 decimals), trailing zeros dropped."""
    text = f"{Decimal(units) / Decimal(10**TOKEN_DECIMALS):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


async def _hashed_model_id(node: Node, path: Path) -> str:
    """The demo model's 0x SHA-256 once the node's registry has hashed it."""
    wanted = path.resolve()
    async with asyncio.timeout(HASH_WAIT_S):
        while True:
            for model in node.list_models():
                if Path(model.path).resolve() == wanted and model.sha256:
                    return "0x" + model.sha256
            await asyncio.sleep(0.2)


async def register_demo_node(node: Node, market: DemoMarket) -> bool:
    """Register the node for the demo model (audited, like the Earnings form); True when it is
    registered with a P2P address clients can reach."""
    status = node.p2p_status()
    if status is None:
        node.log("warning", "demo", "P2P is not running: clients could not reach the node")
        return False
    addrs = [a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/")]
    addrs = addrs or list(status.listen_addrs)
    chain = node.chain_status()
    if chain is not None and chain.registered:
        node.log("info", "demo", "the demo node is registered already")
        return True
    model_id = await _hashed_model_id(node, market.model_path)
    metadata = registration_metadata("", [], status.peer_id, addrs)
    action = Register(
        MIN_STAKE_WEI,
        ((model_id, DEMO_PRICE_PER_MILLION),),
        market.token,
        node.chain.address,
        metadata,
    )
    node.log(
        "info",
        "demo",
        f"registering the demo node for {market.model_path.name} at "
        f"{fusd(DEMO_PRICE_PER_MILLION)} FUSD per million tokens, peer {status.peer_id}",
    )
    try:
        prepared = await node.prepare_chain_action(action)
        outcome = await node.execute_chain_action(prepared)
    except Exception as exc:  # the audit line says it too; the demo goes on unregistered
        node.log("warning", "demo", f"the demo node could not register: {exc}")
        return False
    if not outcome.ok:
        node.log("warning", "demo", f"registration {outcome.status}: {outcome.error}")
        return False
    node.log("info", "demo", f"demo node registered (tx {outcome.tx_hash})")
    return True


async def _model_loaded(node: Node, path: Path) -> None:
    wanted = path.resolve()
    while not any(Path(m.path).resolve() == wanted for m in node.loaded_models()):
        await asyncio.sleep(0.5)


class SimulatedClient:
    """One test account posting jobs in a loop, with its own chain session and P2P host."""

    def __init__(
        self, node: Node, market: DemoMarket, index: int, account: LocalAccount, seed: int
    ) -> None:
        self.node = node
        self.market = market
        self.name = f"client #{index} {short(account.address)}"
        self.account = account
        self.rng = random.Random(seed)  # demo traffic, not security
        self.domain = AuthDomain(market.chain_id, market.job_marketplace)

    def say(self, message: str, level: LogLevel = "info") -> None:
        self.node.log(level, "client", f"{self.name}: {message}")

    async def run(self, model_id: str) -> None:
        """Post, wait, run, maybe release; again until cancelled. A failed job is logged."""
        w3 = client_web3(self.market.rpc_url)
        try:
            async with P2PClient(timeout_s=120) as p2p:
                while True:
                    try:
                        await self.one_job(w3, p2p, model_id)
                    except (MarketError, P2PClientError) as exc:
                        self.say(str(exc), "warning")
                    except Exception as exc:  # our bug or a library's: say it, go on
                        self.say(f"job failed unexpectedly: {exc!r}", "error")
                    await asyncio.sleep(self.rng.uniform(*PAUSE_S))
        finally:
            await close_web3(w3)

    async def one_job(self, w3: Any, p2p: P2PClient, model_id: str) -> None:
        m = self.market
        prompt = self.rng.choice(PROMPTS)
        max_tokens = self.rng.randint(*MAX_TOKENS_RANGE)
        escrow = escrow_for(max_tokens, CLIENT_MAX_PRICE)
        job_id = await post_job(
            w3,
            self.account,
            m.job_marketplace,
            model_id=model_id,
            prompt=prompt,
            max_tokens=max_tokens,
            max_price_per_million=CLIENT_MAX_PRICE,
            ttl_s=JOB_TTL_S,
            token=m.token,
            escrow=escrow,
        )
        self.say(
            f"posted job {job_id}: {prompt!r}, max {max_tokens} tokens, escrow "
            f"{fusd(escrow)} FUSD, up to {fusd(CLIENT_MAX_PRICE)} FUSD/M"
        )
        host = await wait_claimed(w3, m.job_marketplace, job_id, JOB_TTL_S)
        addr = await host_p2p_addr(w3, m.node_registry, host)
        self.say(f"job {job_id} claimed by {short(host)}; sending the signed prompt to {addr}")
        result = await run_job(
            p2p,
            addr,
            private_key=self.account.key,
            domain=self.domain,
            host=host,
            job_id=job_id,
            prompt=prompt,
            model_id=model_id,
            max_tokens=max_tokens,
        )
        end = result.end
        text = " ".join(result.text.split())
        self.say(
            f"job {job_id} answered: {end.completion_tokens} tokens ({end.finish_reason}), "
            f"receipt signed by {short(result.receipt_signer)} ✓: {text[:80]!r}"
        )
        if self.rng.random() < 0.5:
            receipt = await release_early(
                w3, self.account, m.job_marketplace, job_id, timeout_s=SUBMIT_WAIT_S
            )
            tx = "0x" + bytes(receipt["transactionHash"]).hex()
            self.say(f"accepted job {job_id} early: payment released (tx {tx})")
        else:
            self.say(f"leaves job {job_id} to the dispute window; the host releases it after")


class DemoRunner:
    """Registration then the clients, as one task; `stop` cancels and awaits everything."""

    def __init__(self, node: Node, market: DemoMarket, *, clients: bool) -> None:
        self.node = node
        self.market = market
        self.clients = clients
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="demo-clients")
        self._watch = asyncio.create_task(self._stop_with_node(), name="demo-clients-watch")

    async def _stop_with_node(self) -> None:
        """The TUI stops the node itself: the clients stop as soon as it begins to."""
        sub = self.node.bus.subscribe(NodeStateChanged)
        try:
            async for event in sub:
                if isinstance(event, NodeStateChanged) and event.state in ("stopping", "stopped"):
                    break
        finally:
            sub.close()
        await self._cancel_work()

    async def _cancel_work(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        """Cancel the clients (their P2P hosts close) and wait until they are gone."""
        await self._cancel_work()
        watch = self._watch
        if watch is not None and not watch.done():
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _run(self) -> None:
        try:
            if not await register_demo_node(self.node, self.market):
                return
            if not self.clients:
                return
            model_id = await _hashed_model_id(self.node, self.market.model_path)
            await _model_loaded(self.node, self.market.model_path)
            await self._clients(model_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not take the node down: say it
            self.node.log("error", "client", f"the simulated clients stopped: {exc!r}")

    async def _clients(self, model_id: str) -> None:
        keys = devnet_accounts(max(CLIENT_ACCOUNTS) + 1)
        m = self.market
        self.node.log(
            "info",
            "client",
            f"{len(CLIENT_ACCOUNTS)} simulated clients (anvil's PUBLIC test accounts "
            f"{', '.join(f'#{i}' for i in CLIENT_ACCOUNTS)}) post jobs to JobMarketplace "
            f"{m.job_marketplace} on {m.rpc_url} (chain {m.chain_id}); FUSD token {m.token}",
        )
        rng = random.Random()  # demo traffic, not security
        async with asyncio.TaskGroup() as group:
            for index in CLIENT_ACCOUNTS:
                account: LocalAccount = Account.from_key(keys[index].private_key)
                client = SimulatedClient(self.node, m, index, account, rng.randrange(2**32))
                group.create_task(client.run(model_id), name=f"demo-client-{index}")
                await asyncio.sleep(1.0)  # staggered: not three posts in one block


async def wait_follower(node: Node, head: int) -> None:
    """Let the node's chain follower apply blocks up to `head` (bounded: SETTLE_S)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SETTLE_S):
            while True:
                status = node.chain_status()
                if status is not None and (status.applied_block or 0) >= head:
                    return
                await asyncio.sleep(0.2)


def demo_summary(node: Node, token: str) -> tuple[str, int | None]:
    """The headless demo's closing line from the node's job book and ledger, and the chain
    block the ledger had applied (the figures are as of that block)."""
    pipeline = node.jobs
    records = pipeline.book.by_state(JobKind.OPEN, set(JobState)) if pipeline else []
    completed = sum(1 for r in records if r.state in _DONE)
    lost = sum(1 for r in records if r.state == JobState.LOST)
    failed = sum(1 for r in records if r.state == JobState.FAILED)
    credits = [
        e
        for e in node.earnings_entries(limit=1_000_000)
        if e.kind == "credit" and e.token.lower() == token.lower()
    ]
    earned = sum(e.amount for e in credits)
    paid = len({e.reference for e in credits})
    status = node.chain_status()
    block = status.applied_block if status is not None else None
    line = (
        f"demo: {completed} jobs completed ({paid} paid), earned {fusd(earned)} FUSD "
        f"({earned} base units); {lost} lost, {failed} failed"
    )
    return line, block
