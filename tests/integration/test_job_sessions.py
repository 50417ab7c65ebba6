"""Sessions on a real devnet (DESIGN §11.9): a client opens one with our node, the operator
accepts it, requests stream over libp2p with receipts chained one to the next, the node proves
the work on-chain (proof hash = Merkle root of the receipts), and the session ends — completed
by the client, or timed out by the node so the proven work is paid — credited to the wei."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pipeline_kit import (
    FEE_BPS,
    PRICE,
    Rig,
    make_rig,
    open_session,
    p2p_addr,
    session,
    start_node,
    until,
)

from fabstir_tui.client.p2p import P2PRefused
from fabstir_tui.client.p2p_job import P2PClient
from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest
from fabstir_tui.engine.p2p.request_auth import AuthDomain, sign_request
from fabstir_tui.engine.proofs import ZERO_HASH, parse_receipt, receipt_hash
from fabstir_tui.engine.proofs.merkle import merkle_root

PROMPTS = ("Once upon a time", "The rain in Spain", "A long way from home")
ACTIVE, COMPLETED, TIMED_OUT = 1, 2, 3  # JobMarketplace.SessionStatus


def session_key(rig: Rig, sid: int) -> JobKey:
    d = rig.deployment
    return JobKey(JobKind.SESSION, d.chain_id, d.job_marketplace, str(sid))


def request(rig: Rig, sid: int, prompt: str) -> JobRequest:
    d = rig.deployment
    domain = AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace)
    signed = sign_request(
        rig.client_key,
        domain,
        host=rig.host,
        prompt=prompt,
        nonce=time.time_ns(),
        expiry=int(time.time()) + 300,
        session_id=sid,
    )
    return JobRequest(
        model_id=rig.model_sha,
        prompt=prompt,
        max_tokens=12,
        session_id=str(sid),
        temperature=0.0,
        auth=signed.to_wire(),
    )


async def serve(node: Node, rig: Rig, sid: int, prompt: str) -> EndFrame:
    async with P2PClient() as client:
        events = [e async for e in client.job(p2p_addr(node), request(rig, sid, prompt))]
    end = events[-1]
    assert isinstance(end, EndFrame) and end.receipt is not None
    return end


def credited(node: Node, reference: str) -> list[int]:
    return [e.amount for e in node.earnings_entries() if e.reference == reference]


@pytest.mark.slow
async def test_a_session_is_accepted_served_chained_proven_and_completed(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        node = await start_node(rig)
        try:
            deposit = 10**15
            sid = open_session(rig, deposit, interval=40, timeout=3600)
            key = session_key(rig, sid)
            await until(lambda: any(v.key == key for v in node.jobs_snapshot().queue))
            [waiting] = [v for v in node.jobs_snapshot().queue if v.key == key]
            assert waiting.state == JobState.PENDING_APPROVAL and waiting.escrow == deposit

            async with P2PClient() as client:
                with pytest.raises(P2PRefused) as refused:
                    [e async for e in client.job(p2p_addr(node), request(rig, sid, PROMPTS[0]))]
            assert refused.value.code == "busy" and "approval" in refused.value.reason

            accepted = await node.accept_job(key)
            assert accepted.state == JobState.ACTIVE

            d = rig.deployment
            domain = AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace)
            leaves: list[bytes] = []
            used = 0
            prev = ZERO_HASH
            for prompt in PROMPTS:
                end = await serve(node, rig, sid, prompt)
                receipt = parse_receipt(end.receipt).receipt
                assert (receipt.session_id, receipt.job_id) == (sid, 0)
                assert receipt.prev_receipt_hash == prev  # each receipt chains to the last
                leaf = receipt_hash(receipt, domain)
                prev = "0x" + leaf.hex()
                leaves.append(leaf)
                used += end.prompt_tokens + end.completion_tokens

            # 40-token interval: the proofs landed so far cover a prefix of the receipts; the
            # rest is proven when the session goes quiet.
            await until(lambda: session(rig, sid)["tokensProven"] == used, timeout=60)
            state = session(rig, sid)
            proofs = rig.market.events.ProofSubmitted().get_logs(from_block=d.start_block)
            ours = [p for p in proofs if p["args"]["sessionId"] == sid]
            assert sum(p["args"]["tokens"] for p in ours) == used
            roots = {merkle_root(leaves[i:j]) for i in range(3) for j in range(i + 1, 4)}
            assert all(p["args"]["proofHash"] in roots for p in ours)
            assert state["lastProofHash"] == ours[-1]["args"]["proofHash"]

            rig.send(rig.market.functions.completeSession(sid), rig.client)
            await until(lambda: node.jobs.book.get(key).state == JobState.COMPLETED)
            charge = min(used * PRICE // 1_000_000, deposit)
            paid = charge - charge * FEE_BPS // 10_000
            assert await until(lambda: credited(node, f"session {sid}")) == [paid]
        finally:
            await node.stop()


@pytest.mark.slow
async def test_an_abandoned_session_is_proven_then_timed_out_by_the_node(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with Anvil(chain_id=31337, accounts=4) as anvil:
        rig = make_rig(anvil, tiny_gguf, tmp_path)
        node = await start_node(rig, mode="auto")  # the policy accepts sessions too
        try:
            deposit = 10**15
            sid = open_session(rig, deposit, interval=10_000, timeout=300)
            key = session_key(rig, sid)
            await until(lambda: (r := node.jobs.book.get(key)) and r.state == JobState.ACTIVE)
            end = await serve(node, rig, sid, PROMPTS[0])
            used = end.prompt_tokens + end.completion_tokens
            assert session(rig, sid)["tokensProven"] == 0  # far below the interval

            rig.advance(200)  # past half the timeout: prove before it is too late
            await until(lambda: session(rig, sid)["tokensProven"] == used, timeout=60)
            rig.advance(400)  # the client never comes back
            await until(lambda: session(rig, sid)["status"] == TIMED_OUT, timeout=60)
            await until(lambda: node.jobs.book.get(key).state == JobState.TIMED_OUT)
            charge = min(used * PRICE // 1_000_000, deposit)
            paid = charge - charge * FEE_BPS // 10_000
            assert await until(lambda: credited(node, f"session {sid}")) == [paid]
            async with P2PClient() as client:
                with pytest.raises(P2PRefused) as refused:
                    [e async for e in client.job(p2p_addr(node), request(rig, sid, PROMPTS[1]))]
            assert refused.value.code == "not_claimed"
        finally:
            await node.stop()
