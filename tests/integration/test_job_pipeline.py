"""The job loop on a real devnet: a client posts, our node sees it in the market, the operator
claims, the client's signed request streams over real libp2p, the receipt root goes on-chain,
and after the dispute window the payment is released and credited to the wei."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from eth_utils.crypto import keccak
from pipeline_kit import (
    ETH,
    FEE_BPS,
    OTHER_MODEL,
    PRICE,
    WINDOW,
    make_rig,
    p2p_addr,
    start_node,
    until,
)

from fabstir_tui.client.p2p import P2PRefused
from fabstir_tui.client.p2p_job import P2PClient
from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.jobs.states import JobState
from fabstir_tui.engine.jobs.views import JobCommandError
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest, TokenFrame
from fabstir_tui.engine.p2p.request_auth import AuthDomain
from fabstir_tui.engine.proofs import parse_receipt, receipt_hash

PROMPT = "Once upon a time"
SUBMITTED, RELEASED = 3, 5  # JobMarketplace.JobStatus


@pytest.mark.slow
async def test_a_posted_job_is_claimed_run_submitted_and_paid(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        node = await start_node(rig)
        try:
            escrow = 10**15
            job_id = rig.post(PROMPT, escrow=escrow)
            key = rig.key(job_id)
            market = await until(lambda: node.jobs_snapshot().market)
            [seen] = market
            assert (seen.key, seen.state, seen.client) == (key, JobState.SEEN, rig.client)
            assert seen.escrow == escrow and seen.max_tokens == 64

            view = await node.claim_job(key)
            assert view.state == JobState.CLAIMED
            assert rig.job(job_id)["host"] == rig.host
            assert [v.key for v in node.jobs_snapshot().queue] == [key]

            async with P2PClient() as client:
                events = [e async for e in client.job(p2p_addr(node), rig.request(job_id, PROMPT))]
            end = events[-1]
            assert isinstance(end, EndFrame), end
            text = "".join(p for e in events if isinstance(e, TokenFrame) for p in e.pieces)
            assert text and end.receipt is not None

            d = rig.deployment
            domain = AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace)
            leaf = receipt_hash(parse_receipt(end.receipt).receipt, domain)
            used = end.prompt_tokens + end.completion_tokens
            await until(lambda: rig.job(job_id)["status"] == SUBMITTED)
            on_chain = rig.job(job_id)
            assert on_chain["receiptRoot"] == leaf  # one receipt: the root is its hash
            assert on_chain["outputHash"] == keccak(text.encode("utf-8"))
            assert on_chain["tokensUsed"] == used

            rig.advance(WINDOW + 1)
            await until(lambda: rig.job(job_id)["status"] == RELEASED)
            record = await until(
                lambda: (r := node.jobs.book.get(key)) and r.state == JobState.RELEASED and r
            )
            assert record.tokens_used == used
            charge = min(used * PRICE // 1_000_000, escrow)
            fee = charge * FEE_BPS // 10_000
            paid = charge - fee
            credits = await until(
                lambda: [e for e in node.earnings_entries() if e.kind == "credit"]
            )
            assert [(c.amount, c.reference) for c in credits] == [(paid, f"job {job_id}")]
            assert rig.earnings.functions.balanceOf(rig.host, rig.deployment.token).call() in (
                0,
                paid,
            )
            done = node.jobs_snapshot().done
            assert [(v.key, v.state) for v in done] == [(key, JobState.RELEASED)]
            history = [t.to_state for t in node.jobs.book.history(key)]
            assert history == [
                JobState.SEEN,
                JobState.APPROVED,
                JobState.CLAIMED,
                JobState.RUNNING,
                JobState.DELIVERED,
                JobState.SUBMITTED,
                JobState.RELEASED,
            ]
        finally:
            await node.stop()


@pytest.mark.slow
async def test_requests_the_pipeline_refuses_each_say_why(tmp_path: Path, tiny_gguf: Path) -> None:
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        node = await start_node(rig)
        try:
            unclaimed = rig.post(PROMPT)
            claimed = rig.post(PROMPT)
            other_model = rig.post(PROMPT, model=OTHER_MODEL)
            await until(lambda: len(node.jobs_snapshot().market) == 2)
            ids = {v.job_id for v in node.jobs_snapshot().market}
            assert str(other_model) not in ids  # a model we do not serve never enters the market
            await node.claim_job(rig.key(claimed))
            addr = p2p_addr(node)

            async def refusal(request: JobRequest) -> P2PRefused:
                async with P2PClient() as client:
                    with pytest.raises(P2PRefused) as refused:
                        [e async for e in client.job(addr, request)]
                return refused.value

            not_ours = await refusal(rig.request(unclaimed, PROMPT))
            assert not_ours.code == "not_claimed" and "claim it first" in not_ours.reason
            wrong_prompt = await refusal(rig.request(claimed, "another prompt"))
            assert wrong_prompt.code == "prompt_mismatch"
            assert "keccak256" in wrong_prompt.reason
            unsigned = dataclasses.replace(rig.request(claimed, PROMPT), auth=None)
            assert (await refusal(unsigned)).code == "unauthorized"
            stranger = await refusal(rig.request(claimed, PROMPT, signer=b"\x07" * 32))
            assert stranger.code == "unauthorized" and "did not post" in stranger.reason
            unknown = await refusal(rig.request(999, PROMPT))
            assert unknown.code == "not_claimed" and "unknown here" in unknown.reason

            # Nothing is stuck: the claimed job still runs for its real client.
            async with P2PClient() as client:
                events = [e async for e in client.job(addr, rig.request(claimed, PROMPT))]
            assert isinstance(events[-1], EndFrame)

            late = rig.post(PROMPT, ttl=30)
            await until(lambda: any(v.job_id == str(late) for v in node.jobs_snapshot().market))
            rig.advance(60)
            await until(lambda: node.jobs.book.get(rig.key(late)).state == JobState.EXPIRED)
            with pytest.raises(JobCommandError, match="not open for a claim"):
                await node.claim_job(rig.key(late))
            still_open = [v.job_id for v in node.jobs_snapshot().market]
            assert still_open == [str(unclaimed)]  # refused requests left it claimable
        finally:
            await node.stop()


@pytest.mark.slow
async def test_auto_claims_dry_run_only_says_and_a_faster_host_wins(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """Auto mode claims what the policy approves; dry run logs what it would do and claims
    nothing; a job another host claims first is shown as lost, naming the winner."""
    with Anvil(chain_id=31337, accounts=5) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        rival = str(rig.w3.eth.accounts[4])
        nodes = rig.contract("NodeRegistry", rig.deployment.node_registry)
        stake = int(nodes.functions.minStake().call())
        model = bytes.fromhex(rig.model_sha)
        rig.send(nodes.functions.register([model], [PRICE], ETH, rival, "{}"), rival, stake)

        node = await start_node(rig, mode="auto", dry_run=True)
        try:
            dry = rig.post(PROMPT)
            await until(
                lambda: any("dry run, would approve" in r.message for r in node.recent_logs())
            )
            assert rig.job(dry)["host"] == ETH  # nothing was claimed
            assert [v.job_id for v in node.jobs_snapshot().market] == [str(dry)]
        finally:
            await node.stop()

        node = await start_node(rig, mode="auto")
        try:
            await until(lambda: rig.job(dry)["host"] == rig.host)  # the policy claimed it
            assert node.jobs.book.get(rig.key(dry)).state == JobState.CLAIMED
            history = [t.to_state for t in node.jobs.book.history(rig.key(dry))]
            assert history[:3] == [JobState.SEEN, JobState.APPROVED, JobState.CLAIMED]
        finally:
            await node.stop()

        node = await start_node(rig)  # manual: the job waits in the market…
        try:
            raced = rig.post(PROMPT)
            await until(lambda: any(v.job_id == str(raced) for v in node.jobs_snapshot().market))
            rig.send(rig.market.functions.claimJob(raced), rival)  # …and a rival takes it
            lost = await until(
                lambda: next((v for v in node.jobs_snapshot().done if v.job_id == str(raced)), None)
            )
            assert lost.state == JobState.LOST and lost.lost_to == rival
            assert node.jobs_snapshot().lost_count == 1
            with pytest.raises(JobCommandError, match="not open for a claim"):
                await node.claim_job(rig.key(raced))
        finally:
            await node.stop()


@pytest.mark.slow
async def test_a_claim_whose_prompt_never_comes_is_given_back(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """DESIGN §11.8: past jobs.prompt_delivery_s without the client's prompt the node unclaims
    (the escrow stays with the client, the job is open again) and says what the gas cost."""
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        node = await start_node(rig, prompt_delivery_s=2)
        try:
            job_id = rig.post(PROMPT)
            key = rig.key(job_id)
            await until(lambda: any(v.key == key for v in node.jobs_snapshot().market))
            await node.claim_job(key)
            await until(lambda: node.jobs.book.get(key).state == JobState.UNCLAIMED)
            await until(lambda: not node.jobs.book.pending_effects())
            on_chain = rig.job(job_id)
            assert on_chain["host"] == ETH and on_chain["status"] == 1  # open again
            record = node.jobs.book.get(key)
            assert "no prompt within 2 s" in (record.detail or "")
            [unclaim] = [t for t in node.jobs.book.history(key) if t.effect is not None][-1:]
            assert unclaim.effect is not None and unclaim.effect.action == "unclaim"
            assert unclaim.effect_status == "done" and unclaim.effect_result is not None
            assert int(str(unclaim.effect_result["fee_wei"])) > 0  # the gas it cost, recorded
            said = [r.message for r in node.recent_logs() if r.source == "jobs"]
            assert any("giving it back" in m for m in said)
        finally:
            await node.stop()


@pytest.mark.slow
async def test_a_run_whose_deadline_comes_is_stopped_not_submitted(
    tmp_path: Path, smollm_gguf: Path
) -> None:
    """A submit after the deadline reverts: the node stops the run when chain time reaches
    the deadline, the client gets its tokens so far and `deadline_passed`, nothing is sent.
    (SmolLM2, whose long run outlasts the follower noticing the new block; the tiny model
    would fill its context first.)"""
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, smollm_gguf, tmp_path)
        node = await start_node(rig)
        try:
            job_id = rig.post(PROMPT, max_tokens=3000, ttl=120)
            key = rig.key(job_id)
            await until(lambda: any(v.key == key for v in node.jobs_snapshot().market))
            await node.claim_job(key)
            await until(lambda: node.jobs.book.get(key).state == JobState.CLAIMED)
            await until(lambda: not node.jobs.book.pending_effects())
            request = dataclasses.replace(rig.request(job_id, PROMPT), max_tokens=3000)
            frames: list[object] = []
            async with P2PClient() as client:
                try:
                    async for frame in client.job(p2p_addr(node), request):
                        frames.append(frame)
                        if len(frames) == 1:  # streaming: the chain's clock passes the deadline
                            await asyncio.to_thread(rig.advance, 300)
                except P2PRefused as exc:
                    refused = exc
                else:
                    raise AssertionError(f"the late run was not stopped: {frames[-1]}")
            assert refused.code == "deadline_passed"
            assert isinstance(frames[0], TokenFrame)
            streamed = sum(f.tokens for f in frames if isinstance(f, TokenFrame))
            assert 0 < streamed < 1000  # stopped well before the context or max tokens
            assert node.jobs.book.get(key).state != JobState.SUBMITTED
            said = [r.message for r in node.recent_logs() if r.source == "jobs"]
            assert any("run cut: its deadline passed during the run" in m for m in said)
            actions = [t.effect.action for t in node.jobs.book.history(key) if t.effect]
            assert "submit" not in actions
            assert rig.job(job_id)["status"] != SUBMITTED
        finally:
            await node.stop()
