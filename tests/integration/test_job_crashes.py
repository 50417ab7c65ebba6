"""Crash tests (DESIGN §11.12): the node, a subprocess in auto mode, is SIGKILLed at each named
point of a job's lifecycle (FABSTIR_CRASH_AT) and restarted on the same data dir without it.
Across every point the chain shows one claim, one submit and one release, HostEarnings holds
exactly the hand-computed payment, none of our transactions reverted, and the node's SQLite
ends with the job released and nothing pending. A claim whose prompt never comes is given back
exactly once, whichever side of the unclaim tx the node dies on."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_kit import (
    NodeProcess,
    book_facts,
    chain_facts,
    left_at_kill,
    wait_until,
    write_config,
)
from pipeline_kit import FEE_BPS, PRICE, WINDOW, Rig, make_rig

from fabstir_tui.client.p2p import P2PRefused
from fabstir_tui.client.p2p_job import P2PClient
from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.p2p.messages import EndFrame

pytestmark = pytest.mark.slow

# Long enough that prompt + completion tokens make a charge whose 2.5 % fee is not zero.
PROMPT = (
    "Once upon a time, in a small village by the sea, an old fisherman told the children "
    "stories about the storms he had seen and the"
)
ESCROW = 10**15
OPEN, CLAIMED, SUBMITTED, RELEASED = 1, 2, 3, 5  # JobMarketplace.JobStatus
ZERO = "0x0000000000000000000000000000000000000000"
LIMIT_S = 150.0  # safety net for one test's drive, not a speed claim
# What each kill must leave in SQLite: the state already written, and the pending effect with
# (True) or without (False) the hash of its signed tx — written before anything is sent.
LEFT_AT: dict[str, tuple[str, list[tuple[str, bool]]]] = {
    "before_claim_sent": ("claimed", [("claim", False)]),
    "after_claim_journaled": ("claimed", [("claim", False)]),
    "after_claim_sent": ("claimed", [("claim", True)]),
    "after_delivered": ("delivered", []),
    "before_submit_sent": ("submitted", [("submit", False)]),
    "after_submit_journaled": ("submitted", [("submit", False)]),
    "after_submit_sent": ("submitted", [("submit", True)]),
    "before_release_sent": ("submitted", [("release", False)]),
    "after_release_sent": ("submitted", [("release", True)]),
    "before_unclaim_sent": ("unclaimed", [("unclaim", False)]),
    "after_unclaim_sent": ("unclaimed", [("unclaim", True)]),
}
THE_PATH = [p for p in LEFT_AT if "unclaim" not in p]
GIVE_BACK = ["before_unclaim_sent", "after_unclaim_sent"]


@pytest.fixture(scope="module")
def crash_anvil() -> Iterator[Anvil]:
    """One anvil for the module; each test deploys its own suite on it."""
    with Anvil(chain_id=31337, accounts=4) as anvil:
        yield anvil


@pytest.fixture
def rig(crash_anvil: Anvil, tiny_gguf: Path, tmp_path: Path) -> Rig:
    return make_rig(crash_anvil, tiny_gguf, tmp_path)


@pytest.fixture
def node_procs() -> Iterator[list[NodeProcess]]:
    """Every NodeProcess a test makes is killed (by its own handles) if the test fails."""
    made: list[NodeProcess] = []
    yield made
    for node in made:
        node.kill_all()


def _wait_ready(node: NodeProcess) -> None:
    """Wait until the node serves (model loaded): jobs are posted then, so each kill falls on
    the job's path, and a stop after start-up exits 0 (during start-up it exits 130)."""
    wait_until(
        lambda: "running headless" in node.log_text() and "loaded at start" in node.log_text(),
        120,
        "for the model",
        node,
    )


def _died(node: NodeProcess) -> int | None:
    return node.proc.poll()


async def _send_prompt(rig: Rig, node: NodeProcess, job_id: int) -> str:
    """The client's signed prompt over P2P: "end" when the end frame came, "refused: CODE"
    when the node said no (claim not confirmed yet, already delivered), "cut: why" when the
    stream broke (the node died mid-stream, or is not listening yet)."""
    addr = node.addr()
    assert addr is not None
    try:
        async with P2PClient(timeout_s=30) as client:
            events = [e async for e in client.job(addr, rig.request(job_id, PROMPT))]
    except P2PRefused as refused:
        return f"refused: {refused.code}"
    except Exception as exc:
        return f"cut: {type(exc).__name__}: {str(exc)[:80]}"
    return "end" if isinstance(events[-1], EndFrame) else "cut: no end frame"


async def _drive_to_release(
    rig: Rig, node: NodeProcess, job_id: int, point: str | None
) -> list[str]:
    """Play the client (prompt once claimed) and the clock (past the window once submitted),
    restart the node once after its SIGKILL, until the node has seen its payment released.
    What the client got from each of its tries, in order."""
    crashed = point is None  # no crash point: nothing to wait for
    advanced = False
    answers: list[str] = []
    deadline = time.monotonic() + LIMIT_S
    while True:
        assert time.monotonic() < deadline, f"{point}: stuck\n{node.all_logs()[-8000:]}"
        code = _died(node)
        if code is not None:
            assert not crashed and code == -signal.SIGKILL, (
                f"{point}: the node exited with {code}\n{node.all_logs()[-8000:]}"
            )
            crashed = True
            assert point is not None
            assert left_at_kill(rig.data_dir / "node.db", job_id) == LEFT_AT[point]
            node.start()  # same data dir, no crash point
            continue
        job = rig.job(job_id)
        status = job["status"]
        done = "end" in answers or "refused: already_delivered" in answers
        released = status == RELEASED and f"job {job_id} is now released" in node.log_text()
        if released and crashed and done:
            return answers
        cut_off = bool(answers) and answers[-1].startswith("cut")  # a client retries after a cut
        ours = job["host"] == rig.host
        asks = status == CLAIMED or (cut_off and status in (SUBMITTED, RELEASED))
        if ours and asks and not done and node.addr():
            answers.append(await _send_prompt(rig, node, job_id))
        elif status == SUBMITTED and not advanced:
            rig.advance(WINDOW + 1)
            advanced = True
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("point", THE_PATH)
async def test_a_job_killed_at_any_point_is_claimed_submitted_and_paid_once(
    point: str, rig: Rig, tmp_path: Path, node_procs: list[NodeProcess]
) -> None:
    config = write_config(rig, tmp_path, mode="auto")
    node = NodeProcess(config, tmp_path)
    node_procs.append(node)
    node.start(crash_at=point)
    _wait_ready(node)
    job_id = rig.post(PROMPT, escrow=ESCROW)

    answers = await _drive_to_release(rig, node, job_id, point)
    _wait_ready(node)  # a stop during start-up exits 130, not 0
    assert node.stop() == 0, node.all_logs()[-4000:]

    logs = node.all_logs()
    assert len(node.runs) == 2 and node.runs[0].returncode == -signal.SIGKILL, logs[-4000:]
    chain = chain_facts(rig, job_id, rig.deployment.start_block)
    assert chain.claimed_by == [rig.host], logs[-4000:]
    assert chain.host_calls == ["claimJob", "submitResult", "releasePayment"], logs[-4000:]
    assert chain.host_failed == 0, logs[-4000:]
    [submitted] = chain.submitted
    [released] = chain.released
    tokens = int(submitted["tokensUsed"])
    charge = min(tokens * PRICE // 1_000_000, ESCROW)
    fee = charge * FEE_BPS // 10_000
    paid = charge - fee
    assert fee > 0  # the prompt is long enough that the fee arithmetic is exercised
    assert (released["charge"], released["fee"], released["hostAmount"]) == (charge, fee, paid)
    assert released["refund"] == ESCROW - charge
    assert chain.credited == [paid]
    assert chain.balance == paid

    book = book_facts(rig.data_dir / "node.db", job_id)
    assert book.state == "released", book
    assert book.tokens_used == tokens
    assert book.pending_effects == 0 and book.pending_txs == 0, book
    assert all(status == "done" and ok == "ok" for _, status, ok, _ in book.effects), book
    sent = list(dict.fromkeys((action, tx) for action, _, _, tx in book.effects))
    assert [action for action, _ in sent] == ["claim", "submit", "release"], book
    assert book.history[-4:] == ["running", "delivered", "submitted", "released"], book
    assert book.credits == [(str(paid), f"job {job_id}")], book

    # The client pays for this job: it must have received the answer and its receipt (a kill
    # between the run's end and the end frame is answered on the client's retry, from the
    # archive).
    assert "end" in answers, f"the client never got its answer: {answers}\n{logs[-4000:]}"


@pytest.mark.parametrize("point", GIVE_BACK)
async def test_a_claim_whose_prompt_never_comes_is_given_back_once(
    point: str, rig: Rig, tmp_path: Path, node_procs: list[NodeProcess]
) -> None:
    config = write_config(rig, tmp_path, mode="auto", prompt_delivery_s=2)
    node = NodeProcess(config, tmp_path)
    node_procs.append(node)
    node.start(crash_at=point)
    _wait_ready(node)
    job_id = rig.post(PROMPT, escrow=ESCROW)

    wait_until(lambda: _died(node) is not None, LIMIT_S, f"for the kill at {point}", node)
    assert node.proc.returncode == -signal.SIGKILL, node.all_logs()[-4000:]
    assert left_at_kill(rig.data_dir / "node.db", job_id) == LEFT_AT[point]
    node.start()
    wait_until(
        lambda: f"job {job_id}: unclaim done" in node.log_text(),
        LIMIT_S,
        "for the unclaim after the restart",
        node,
    )
    _wait_ready(node)  # a stop during start-up exits 130, not 0
    assert node.stop() == 0, node.all_logs()[-4000:]

    logs = node.all_logs()
    job = rig.job(job_id)
    assert (job["status"], job["host"]) == (OPEN, ZERO)  # open again, escrow still there
    assert job["escrow"] == ESCROW
    chain = chain_facts(rig, job_id, rig.deployment.start_block)
    assert chain.claimed_by == [rig.host] and chain.unclaimed_by == [rig.host], logs[-4000:]
    assert chain.host_calls == ["claimJob", "unclaimJob"], logs[-4000:]
    assert chain.host_failed == 0
    assert chain.submitted == [] and chain.released == [] and chain.credited == []

    book = book_facts(rig.data_dir / "node.db", job_id)
    assert book.state == "unclaimed", book
    assert book.pending_effects == 0 and book.pending_txs == 0, book
    assert [(a, status, ok) for a, status, ok, _ in book.effects] == [
        ("claim", "done", "ok"),
        ("unclaim", "done", "ok"),
    ], book
    assert book.credits == [], book


async def test_a_paid_job_has_one_release_effect(
    rig: Rig, tmp_path: Path, node_procs: list[NodeProcess]
) -> None:
    config = write_config(rig, tmp_path, mode="auto")
    node = NodeProcess(config, tmp_path)
    node_procs.append(node)
    node.start()
    _wait_ready(node)
    job_id = rig.post(PROMPT, escrow=ESCROW)

    await _drive_to_release(rig, node, job_id, None)
    assert node.stop() == 0, node.all_logs()[-4000:]

    assert node.all_logs().count(f"job {job_id}: release done") == 1
    book = book_facts(rig.data_dir / "node.db", job_id)
    assert [action for action, *_ in book.effects] == ["claim", "submit", "release"], book
