"""Jobs screen: on a real devnet a posted job appears in the market, `c` quotes it (revenue to
the unit) and claims it on-chain, `x` rejects another; at 80x24 every table, the detail pane
with its live preview and the quote dialog fit, and empty tables say what to do."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from devnet_kit import Devnet, chain_config, node_keystore
from textual.geometry import Region
from textual.widget import Widget
from textual.widgets import DataTable, Static
from ui_helpers import key, wait_for

from fabstir_tui.engine.jobs.quote import make_quote
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.jobs.views import JobsChanged, JobView
from fabstir_tui.engine.node import Node
from fabstir_tui.ui.app import FabstirApp
from fabstir_tui.ui.job_format import compact_amount, countdown
from fabstir_tui.ui.screens.job_dialogs import JobDetailScreen, JobQuoteScreen, RejectJobScreen
from fabstir_tui.ui.screens.jobs import JobsScreen

pytestmark = pytest.mark.slow

MIN_STAKE = 10**17
OUR_PRICE = 250_000  # FUSD base units (6 decimals) per million tokens
MARKET = "0x5fbdb2315678afecb367f032d93f642f64180aa3"


def register_host(devnet: Devnet) -> None:
    """Our key (anvil account 1, unlocked in anvil) registers the tiny model at OUR_PRICE."""
    call = devnet.nodes.functions.register(
        [devnet.model_id], [OUR_PRICE], devnet.deployment.token, devnet.host, "ui-test"
    )
    devnet.send(call, devnet.host, value=MIN_STAKE)


def view_of(views: tuple[JobView, ...], job_id: int) -> JobView | None:
    return next((v for v in views if v.job_id == str(job_id)), None)


def row_text(table: DataTable[object], view: JobView) -> list[str]:
    return [str(cell) for cell in table.get_row(str(view.key))]


async def test_a_posted_job_is_quoted_claimed_and_another_rejected(
    tmp_path: Path,
    config_for: Callable[..., object],
    models_dir: Path,
    devnet: Devnet,
    passphrase_file: Path,
) -> None:
    register_host(devnet)
    keystore = node_keystore(tmp_path / "data")
    config = chain_config(config_for(), devnet, keystore)  # type: ignore[arg-type]
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
            market = screen.table("market")

            job = devnet.post_job(escrow=10_000, max_tokens=2_000, max_price=1_000_000)
            await wait_for(
                pilot,
                lambda: view_of(screen.jobs.market, job) is not None and market.row_count == 1,
                "the posted job in the market",
            )
            posted = view_of(screen.jobs.market, job)
            assert posted is not None
            cells = row_text(market, posted)
            assert posted.model_name.startswith("tiny-llama")  # the file on this node
            assert cells[0] == str(job) and cells[1] == posted.model_name
            assert cells[3:6] == ["2,000", "1", "0.01"]  # max tokens, 1 FUSD/M, 0.01 FUSD

            # c: the quote dialog. 2,000 tokens x 250,000 per M = 500 (escrow 10,000 is more);
            # fee 2.5% = 12 (12.5 down); revenue 488 = 0.000488 FUSD.
            await pilot.press("c")
            await wait_for(pilot, lambda: isinstance(app.screen, JobQuoteScreen), "quote")
            dialog = app.screen
            assert isinstance(dialog, JobQuoteScreen)
            quote = dialog.quote
            assert quote.refusal is None
            assert (quote.price_per_million, quote.expected_charge) == (OUR_PRICE, 500)
            assert (quote.fee, quote.expected_revenue) == (12, 488)
            assert (quote.token_symbol, quote.token_decimals) == ("FUSD", 6)
            shown = [str(s.render()) for s in dialog.query(".confirm-value").results(Static)]
            assert "0.000488 FUSD" in shown
            assert "0.00000025 FUSD per token (0.25 FUSD per M)" in shown
            await pilot.press("y")

            await wait_for(
                pilot,
                lambda: devnet.market.functions.getJob(job).call()[5] == devnet.host,
                "claimed on chain by us",
            )
            queue = screen.table("queue")
            await wait_for(
                pilot,
                lambda: (v := view_of(screen.jobs.queue, job)) is not None
                and v.state == JobState.CLAIMED
                and queue.row_count == 1
                and row_text(queue, v)[1] == "claimed",
                "the job in our queue, claimed",
            )
            assert view_of(screen.jobs.market, job) is None

            # x on a second market job: confirm, and it leaves the market for Done.
            second = devnet.post_job(escrow=5_000, max_tokens=100, max_price=1_000_000)
            await wait_for(
                pilot, lambda: view_of(screen.jobs.market, second) is not None, "second job"
            )
            if screen.active != "market":  # the focus left the market while it was empty
                await pilot.press("tab")
            assert screen.active == "market"
            target = view_of(screen.jobs.market, second)
            assert target is not None
            market.move_cursor(row=market.get_row_index(str(target.key)))
            await pilot.press("x")
            await wait_for(pilot, lambda: isinstance(app.screen, RejectJobScreen), "reject?")
            await pilot.press("y")
            await wait_for(
                pilot,
                lambda: view_of(screen.jobs.market, second) is None
                and (v := view_of(screen.jobs.done, second)) is not None
                and v.state == JobState.REJECTED,
                "the second job rejected, in Done",
            )
            onchain = devnet.market.functions.getJob(second).call()
            assert onchain[5] != devnet.host  # nothing was claimed for it
            audit = [a.action for a in node.recent_audit()]
            assert any("claim" in a for a in audit) and any("reject" in a for a in audit)
    finally:
        await node.stop()


# --- 80x24 with a recorded picture (no chain needed) --------------------------------------


def seeded_view(job_id: int, state: JobState, **changes: object) -> JobView:
    view = JobView(
        key=JobKey(JobKind.OPEN, 31337, MARKET, str(job_id)),
        state=state,
        model_id="0x" + "ab" * 32,
        model_name="tiny-llama-with-a-long-name",
        client="0x" + "c1" * 20,
        token="0x0000000000000000000000000000000000000000",
        escrow=123_456_789_012_345_678,
        max_tokens=4_096,
        max_price_per_million=98_765_432_109_876,
        price_per_million=None,
        deadline=int(time.time()) + 5_400,
        updated_at=time.time(),
    )
    return replace(view, **changes)  # type: ignore[arg-type]


def seeded_picture(preview: str, tokens: int = 1_234) -> JobsChanged:
    market = tuple(seeded_view(100 + i, JobState.SEEN) for i in range(6))
    queue = (
        seeded_view(
            90,
            JobState.RUNNING,
            price_per_million=50_000_000_000_000,
            tokens=tokens,
            tokens_per_s=41.5,
            preview=preview,
        ),
        seeded_view(91, JobState.CLAIMED, price_per_million=50_000_000_000_000, queue_position=1),
        seeded_view(92, JobState.PENDING_APPROVAL),
    )
    done = tuple(
        seeded_view(80 + i, state, detail=f"ended {state.value}", lost_to="0x" + "d2" * 20)
        for i, state in enumerate((JobState.RELEASED, JobState.LOST, JobState.EXPIRED))
    )
    return JobsChanged(market=market, queue=queue, done=done, lost_count=2, mode="manual")


def inside(widget: Widget, screen: Region) -> bool:
    return screen.contains_region(widget.region)


async def test_jobs_fit_80x24_with_detail_preview_and_quote(
    node_for: Callable[..., Node],
) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: node.state == "running", "node running")
        await pilot.press("2")
        await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), "jobs screen")
        screen = app.screen
        assert isinstance(screen, JobsScreen)

        # Empty: no tables, the hints say what to do; keys answer instead of failing.
        hint = screen.query_one("#jobs-market-hint", Static)
        assert hint.display and not screen.table("market").display
        assert "no chain configured" in str(hint.render())
        assert "claim an open job with c" in str(screen.query_one("#jobs-queue-hint").render())
        await pilot.press("c", "x", "a", "enter")
        assert isinstance(app.screen, JobsScreen)

        node.bus.publish(seeded_picture("first words"))
        await wait_for(pilot, lambda: screen.table("market").row_count == 6, "market rows")
        await wait_for(pilot, lambda: screen.table("queue").row_count == 3, "queue rows")
        await pilot.pause()
        whole = Region(0, 0, 80, 24)
        summary = str(screen.query_one("#jobs-summary", Static).render())
        assert "lost to faster hosts: 2" in summary and "mode manual" in summary
        for name in ("market", "queue", "done"):
            table = screen.table(name)  # type: ignore[arg-type]
            assert table.display and inside(table, whole), name
            assert table.region.height >= 3, f"{name} shows no rows at 80x24"
            # every column is on screen: nothing to scroll sideways
            assert table.virtual_size.width <= table.scrollable_content_region.width, name
        for child in screen.children:
            assert inside(child, whole), child
        queue_running = [str(c) for c in screen.table("queue").get_row_at(0)]
        assert queue_running[1:4] == ["running", "1,234/4,096", "41.5"]
        assert queue_running[6] == "0.00005"  # ETH per M, exact: it fits
        market_row = [str(c) for c in screen.table("market").get_row_at(0)]
        # 0.000098765432109876 ETH per M and 0.123456789012345678 ETH escrow do not fit their
        # 9 and 10 cells: rounded, marked ~ (the dialog and detail show them exactly).
        assert market_row[1] == "tiny-llama-wit…"
        assert market_row[4:6] == ["~0.000099", "~0.1234568"]

        # tab to the queue, enter: the detail pane, which follows the running job's output.
        await pilot.press("tab")
        assert screen.active == "queue"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobDetailScreen), "detail")
        detail = app.screen
        assert isinstance(detail, JobDetailScreen)
        assert inside(detail.query_one("#job-detail"), whole)
        preview = detail.query_one("#job-preview", Static)
        assert str(preview.render()).strip() == "first words"
        node.bus.publish(seeded_picture("first words and then the rest of the answer", 1_500))
        await wait_for(
            pilot,
            lambda: "the rest of the answer" in str(preview.render()),
            "the preview follows the job",
        )
        # The table under the pane moved on too: the same rows, that one cell updated.
        assert str(screen.table("queue").get_row_at(0)[2]) == "1,500/4,096"
        fields = str(detail.query_one("#job-detail-fields", Static).render())
        assert "tokens       1,500" in fields and "0.00005 ETH per M" in fields
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, "detail closed")

        # a on the work waiting for approval: this node has no pipeline (no chain), so the
        # Node refuses; the reason is a notification and an audit line, nothing crashes.
        queue = screen.table("queue")
        queue.move_cursor(row=2)
        assert screen.selected_view() == screen.jobs.queue[2]
        await pilot.press("a")
        await wait_for(
            pilot,
            lambda: any("pipeline is off" in str(n.message) for n in app._notifications),
            "the refusal shown",
        )
        assert app.screen is screen
        assert any(a.action == "quote job" and "refused" in a.outcome for a in node.recent_audit())
        queue.move_cursor(row=0)  # a running job: `a` and `x` say what they need instead
        await pilot.press("a", "x")
        assert app.screen is screen

        # The quote dialog for a job fits too, its buttons on screen.
        view = screen.jobs.market[0]
        quote = make_quote(
            view,
            our_price=50_000_000_000_000,
            fee_bps=250,
            gas_estimate_wei=21_000 * 10**9,
            tokens_per_s=41.5,
            model_bytes=None,
            free_bytes=None,
            now=int(time.time()),
            token_symbol="ETH",
            token_decimals=18,
            refusal=None,
        )
        app.push_screen(JobQuoteScreen(quote, "Claim"))
        await wait_for(pilot, lambda: isinstance(app.screen, JobQuoteScreen), "quote dialog")
        await pilot.pause()
        dialog = app.screen
        for widget_id in ("#job-quote", "#job-quote-yes", "#job-quote-no"):
            assert inside(dialog.query_one(widget_id), whole), widget_id
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is screen, "quote closed")


def test_cells_count_down_and_round_only_what_does_not_fit() -> None:
    assert [countdown(s) for s in (0, -3, 59, 60, 3_599, 3_600, 86_399, 90_061)] == [
        "passed",
        "passed",
        "59s",
        "1m00s",
        "59m59s",
        "1h00m",
        "23h59m",
        "1d01h",
    ]
    assert compact_amount(10_000, 6, 10) == "0.01"  # exact when it fits
    assert compact_amount(1_234_567_890_000, 6, 10) == "~1,234,568"
    assert compact_amount(1, 18, 9) == "~1e-18"  # never rounded to a false zero
    assert compact_amount(None, 6, 5) == "—"
