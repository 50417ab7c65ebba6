"""The whole job loop through the TUI on a real devnet (issue 5): a client posts a job, it
appears in the Jobs market as soon as the follower applies its block, `c` + confirm claims
it, the client's signed request streams over real libp2p, the receipt root lands on-chain,
and after the dispute window the node releases the payment and Earnings shows the split —
charge, fee, paid, refund — to the base unit."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from devnet_kit import Devnet, anvil_key, chain_config, node_keystore
from eth_utils.crypto import keccak
from textual.widgets import DataTable, Static
from ui_helpers import key, wait_for

from fabstir_tui.client.p2p_job import P2PClient
from fabstir_tui.config import Config
from fabstir_tui.engine.chain.deploy import DISPUTE_WINDOW_S, FEE_BPS
from fabstir_tui.engine.jobs.states import JobState
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest, TokenFrame
from fabstir_tui.engine.p2p.request_auth import AuthDomain, sign_request
from fabstir_tui.engine.proofs import parse_receipt, receipt_hash
from fabstir_tui.ui.app import FabstirApp
from fabstir_tui.ui.screens.earnings import EarningsScreen
from fabstir_tui.ui.screens.job_dialogs import JobQuoteScreen
from fabstir_tui.ui.screens.jobs import JobsScreen

pytestmark = pytest.mark.slow

MIN_STAKE = 10**17
OUR_PRICE = 3_000_000  # FUSD base units per million tokens
PROMPT = "The quick brown fox"
SUBMITTED, RELEASED = 3, 5  # JobMarketplace.JobStatus


def with_p2p(config: Config) -> Config:
    dumped = config.model_dump(mode="json")
    dumped["p2p"] = {"enabled": True, "listen_addrs": ["/ip4/127.0.0.1/tcp/0"], "dht": False}
    return Config.model_validate(dumped)


def post(devnet: Devnet, escrow: int, max_tokens: int) -> tuple[int, int]:
    """The client posts an FUSD job for PROMPT; (job id, the block it was mined in)."""
    devnet.send(devnet.token.functions.mint(devnet.client, escrow), devnet.deployment.deployer)
    devnet.send(devnet.token.functions.approve(devnet.market.address, escrow), devnet.client)
    deadline = int(devnet.w3.eth.get_block("latest")["timestamp"]) + 3 * DISPUTE_WINDOW_S
    call = devnet.market.functions.postJob(
        devnet.model_id,
        keccak(PROMPT.encode("utf-8")),
        max_tokens,
        OUR_PRICE * 2,
        deadline,
        devnet.token.address,
        escrow,
    )
    receipt = devnet.send(call, devnet.client)
    return int(devnet.market.functions.jobCount().call()), int(receipt["blockNumber"])


def signed_request(devnet: Devnet, job_id: int, model_sha: str) -> JobRequest:
    d = devnet.deployment
    domain = AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace)
    signed = sign_request(
        anvil_key(2),  # devnet.client is anvil account 2
        domain,
        host=devnet.host,
        prompt=PROMPT,
        nonce=time.time_ns(),
        expiry=int(time.time()) + 300,
        job_id=job_id,
    )
    return JobRequest(
        model_id=model_sha,
        prompt=PROMPT,
        max_tokens=24,
        job_id=str(job_id),
        temperature=0.0,
        auth=signed.to_wire(),
    )


async def test_post_claim_stream_submit_release_and_earnings_to_the_unit(
    tmp_path: Path,
    config_for: Callable[..., Config],
    models_dir: Path,
    devnet: Devnet,
    passphrase_file: Path,
) -> None:
    call = devnet.nodes.functions.register(
        [devnet.model_id], [OUR_PRICE], devnet.deployment.token, devnet.host, "e2e"
    )
    devnet.send(call, devnet.host, value=MIN_STAKE)
    config = with_p2p(chain_config(config_for(), devnet, node_keystore(tmp_path / "data")))
    node = Node(config)
    app = FabstirApp(node, config)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: node.state == "running", "node running")
            await wait_for(pilot, lambda: node.chain.wallet_state == "unlocked", "key unlocked")
            await wait_for(pilot, lambda: any(m.sha256 for m in node.snapshot().models), "hash")
            await node.load_model(key(models_dir / "tiny-llama.gguf"))
            await pilot.press("2")
            await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), "jobs screen")
            screen = app.screen
            assert isinstance(screen, JobsScreen)

            escrow = 1_000_000
            job_id, block = post(devnet, escrow=escrow, max_tokens=200)
            await wait_for(
                pilot,
                lambda: any(v.job_id == str(job_id) for v in screen.jobs.market),
                "the job in the market",
            )
            status = node.chain_status()
            assert status is not None and status.applied_block is not None
            assert status.applied_block <= block + 1  # listed by the block that posted it

            await pilot.press("c")
            await wait_for(pilot, lambda: isinstance(app.screen, JobQuoteScreen), "the quote")
            await pilot.press("y")
            await wait_for(
                pilot,
                lambda: any(
                    v.job_id == str(job_id) and v.state == JobState.CLAIMED
                    for v in screen.jobs.queue
                )
                and devnet.market.functions.getJob(job_id).call()[5] == devnet.host,
                "claimed by us, on-chain and in the queue",
            )

            status_p2p = node.p2p_status()
            assert status_p2p is not None
            addr = next(a for a in status_p2p.listen_addrs if a.startswith("/ip4/127.0.0.1/"))
            model_sha = devnet.model_id.hex()
            async with P2PClient() as client:
                events = [
                    e async for e in client.job(addr, signed_request(devnet, job_id, model_sha))
                ]
            end = events[-1]
            assert isinstance(end, EndFrame) and end.receipt is not None
            text = "".join(p for e in events if isinstance(e, TokenFrame) for p in e.pieces)
            assert text

            market = devnet.market.functions
            await wait_for(pilot, lambda: market.getJob(job_id).call()[2] == SUBMITTED, "submitted")
            fn = market.getJob(job_id)
            names = [o["name"] for o in fn.abi["outputs"][0]["components"]]
            on_chain = dict(zip(names, fn.call(), strict=True))
            d = devnet.deployment
            domain = AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace)
            assert on_chain["receiptRoot"] == receipt_hash(
                parse_receipt(end.receipt).receipt, domain
            )
            assert on_chain["outputHash"] == keccak(text.encode("utf-8"))
            used = end.prompt_tokens + end.completion_tokens
            assert on_chain["tokensUsed"] == used

            devnet.anvil.rpc("evm_increaseTime", [DISPUTE_WINDOW_S + 1])
            devnet.anvil.rpc("evm_mine", [])
            await wait_for(
                pilot, lambda: market.getJob(job_id).call()[2] == RELEASED, "released", 60
            )
            charge = min(used * OUR_PRICE // 1_000_000, escrow)
            fee = charge * FEE_BPS // 10_000
            paid, refund = charge - fee, escrow - charge
            await wait_for(
                pilot,
                lambda: any(e.kind == "credit" for e in node.earnings_entries()),
                "the credit in the ledger",
            )
            await pilot.press("5")
            await wait_for(pilot, lambda: isinstance(app.screen, EarningsScreen), "earnings")
            earnings = app.screen
            ledger = earnings.query_one("#earn-ledger", DataTable)
            await wait_for(pilot, lambda: ledger.row_count >= 1, "the payment row")
            ledger.move_cursor(row=0)
            split = earnings.query_one("#earn-split", Static)
            expected = (
                f"job {job_id}: charge {charge} - fee {fee} = paid {paid}; "
                f"refunded {refund} to the client (base units)"
            )
            await wait_for(pilot, lambda: str(split.render()) == expected, "the split line")
            assert paid > 0 and fee > 0 and refund > 0
            done = [v for v in node.jobs_snapshot().done if v.job_id == str(job_id)]
            assert [v.state for v in done] == [JobState.RELEASED]
    finally:
        await node.stop()
