"""Pilot tests on a real devnet: register and withdraw through the confirm dialog, Earnings
shows the exact amounts after a payment, and read-only mode refuses every on-chain action."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from devnet_kit import PASSPHRASE, Devnet, chain_config, node_keystore
from textual.widgets import DataTable, Input, Static
from ui_helpers import wait_for

from fabstir_tui.engine.node import Node
from fabstir_tui.ui.app import FabstirApp
from fabstir_tui.ui.screens.confirm_tx import ConfirmTxScreen
from fabstir_tui.ui.screens.earnings import EarningsScreen
from fabstir_tui.ui.screens.passphrase import PassphraseScreen
from fabstir_tui.ui.screens.register_form import RegisterScreen

MIN_STAKE = 10**17


def cells(table: DataTable[object], row_key: str) -> list[str]:
    return [str(cell) for cell in table.get_row(row_key)]


async def test_register_get_paid_and_withdraw_through_the_confirm_dialog(
    tmp_path: Path, config_for: object, devnet: Devnet, passphrase_file: Path
) -> None:
    data = tmp_path / "data"
    keystore = node_keystore(data)
    config = chain_config(config_for(), devnet, keystore)  # type: ignore[operator]
    node = Node(config)
    app = FabstirApp(node, config)
    token = devnet.deployment.token
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: node.state == "running", "node running")
            await wait_for(pilot, lambda: node.chain.wallet_state == "unlocked", "key unlocked")
            await wait_for(pilot, lambda: any(m.sha256 for m in node.snapshot().models), "hash")
            await pilot.press("5")
            await wait_for(pilot, lambda: isinstance(app.screen, EarningsScreen), "earnings")
            await wait_for(pilot, lambda: node.chain.status.block is not None, "chain status")

            # Register: the form, then the dialog that shows what will be signed.
            await pilot.press("g")
            await wait_for(pilot, lambda: isinstance(app.screen, RegisterScreen), "form")
            form = app.screen
            assert isinstance(form, RegisterScreen)
            form.query_one("#reg-price-0", Input).value = "0.5"  # FUSD per million tokens
            form.submit()
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTxScreen), "confirm")
            confirm = app.screen
            assert isinstance(confirm, ConfirmTxScreen)
            preview = confirm.preview
            assert (preview.contract, preview.function) == ("NodeRegistry", "register")
            assert preview.value_wei == MIN_STAKE
            assert preview.address == devnet.deployment.node_registry
            shown = {a.name: a.display for a in preview.args}
            assert devnet.payout.lower() not in shown["payout"].lower()  # it defaults to us
            assert devnet.host.lower() in shown["payout"].lower()
            await pilot.press("y")
            await wait_for(
                pilot, lambda: devnet.nodes.functions.isRegistered(devnet.host).call(), "on chain"
            )
            await wait_for(pilot, lambda: node.chain.status.registered, "status registered")
            price = devnet.nodes.functions.priceOf(devnet.host, devnet.model_id).call()
            assert price == 500_000  # 0.5 FUSD (6 decimals) per million tokens

            # The same form changes one model's price: a bad value is refused in the form,
            # and an unchanged set of models is a single setPrice call.
            await pilot.press("g")
            await wait_for(pilot, lambda: isinstance(app.screen, RegisterScreen), "form again")
            form = app.screen
            assert isinstance(form, RegisterScreen)
            assert form.query_one("#reg-price-0", Input).value == "0.5"
            form.query_one("#reg-price-0", Input).value = "0.0000001"
            form.submit()
            error = str(form.query_one("#reg-error", Static).render())
            assert "at most 6 decimals" in error and isinstance(app.screen, RegisterScreen)
            form.query_one("#reg-price-0", Input).value = "0.25"
            form.submit()
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTxScreen), "confirm")
            assert isinstance(app.screen, ConfirmTxScreen)
            assert app.screen.preview.function == "setPrice"
            await pilot.press("y")
            await wait_for(
                pilot,
                lambda: devnet.nodes.functions.priceOf(devnet.host, devnet.model_id).call()
                == 250_000,
                "new price on chain",
            )

            # A client pays for a job: claim and submit with the node's own sender.
            job = devnet.post_job(escrow=10_000, max_tokens=2_000, max_price=1_000_000)
            sender = node.chain.sender
            assert sender is not None
            market = devnet.market.functions
            (await sender.transact(market.claimJob(job))).raise_for_failure()
            submit = market.submitResult(job, 1_234, b"\x02" * 32, b"\x03" * 32)
            (await sender.transact(submit)).raise_for_failure()
            devnet.send(market.releasePayment(job), devnet.client)  # accepts early
            # charge = 1,234 x 250,000 / 1e6 = 308 (308.5 down); fee 2.5% = 7 (7.7 down);
            # host 301; the client's refund is 10,000 - 308 = 9,692.
            assert devnet.earnings.functions.balanceOf(devnet.host, token).call() == 301
            refund = devnet.market.functions.claimable(devnet.client, token).call()
            assert refund == 9_692

            screen = app.screen
            assert isinstance(screen, EarningsScreen)
            balances = screen.query_one("#earn-balances", DataTable)

            def fusd_row() -> list[str]:
                return cells(balances, token)

            # The balance is read from the contract, the earned figures from our ledger (the
            # follower applies the Credited log): both arrive, maybe not in the same refresh.
            await wait_for(
                pilot,
                lambda: fusd_row()[1] == "0.000301" and fusd_row()[5] == "0.000301",
                "payment shown",
            )
            symbol, withdrawable, held, today, week, total = fusd_row()
            assert (symbol, today, week, total) == ("FUSD", "0.000301", "0.000301", "0.000301")
            assert held == "0"
            ledger = screen.query_one("#earn-ledger", DataTable)
            rows = [[str(c) for c in ledger.get_row_at(i)] for i in range(ledger.row_count)]
            assert [r[1:4] for r in rows] == [["payment", "job 1", "0.000301 FUSD"]]

            # Withdraw the FUSD row through the dialog; it goes to the payout address (us).
            balances.move_cursor(row=balances.get_row_index(token))
            before = devnet.token.functions.balanceOf(devnet.host).call()
            await pilot.press("w")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTxScreen), "confirm")
            confirm = app.screen
            assert isinstance(confirm, ConfirmTxScreen)
            assert (confirm.preview.contract, confirm.preview.function) == (
                "HostEarnings",
                "withdraw",
            )
            notes = {n.label: n for n in confirm.notes}  # what the arguments do not show
            assert (notes["amount"].amount, notes["amount"].symbol) == (301, "FUSD")
            assert notes["pays to"].text == devnet.host  # the payout defaulted to our key
            await pilot.press("y")
            await wait_for(
                pilot,
                lambda: devnet.token.functions.balanceOf(devnet.host).call() == before + 301,
                "withdrawn on chain",
            )
            await wait_for(pilot, lambda: fusd_row()[1] == "0", "withdrawable back to 0")
            await wait_for(pilot, lambda: ledger.row_count == 2, "withdrawal row")
            assert [str(c) for c in ledger.get_row_at(0)][1:4] == [
                "withdrawal",
                "—",
                "-0.000301 FUSD",
            ]
            audit = [(a.action, a.outcome) for a in node.recent_audit()]
            assert any(a.startswith("register") and o == "mined" for a, o in audit)
            assert any(a.startswith("withdraw") and o == "mined" for a, o in audit)
    finally:
        await node.stop()


async def test_read_only_mode_refuses_every_chain_action(
    tmp_path: Path, config_for: object, devnet: Devnet, passphrase_file: Path
) -> None:
    keystore = node_keystore(tmp_path / "data")
    config = chain_config(config_for(), devnet, keystore, read_only=True)  # type: ignore[operator]
    node = Node(config)
    app = FabstirApp(node, config)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: node.state == "running", "node running")
            await pilot.press("5")
            await wait_for(pilot, lambda: isinstance(app.screen, EarningsScreen), "earnings")
            await wait_for(pilot, lambda: node.chain.status.block is not None, "chain status")
            assert node.chain.wallet_state == "locked"  # read-only never decrypts the key
            for key in ("g", "w", "D"):
                await pilot.press(key)
                await pilot.pause(0.2)
                assert isinstance(app.screen, EarningsScreen), f"{key} opened a dialog"
            refusals = [a for a in node.recent_audit() if "read-only" in a.outcome]
            assert len(refusals) == 3
            assert not devnet.nodes.functions.isRegistered(devnet.host).call()
    finally:
        await node.stop()


@pytest.fixture
def no_keyring() -> Iterator[None]:
    """The OS keyring is a boundary this machine lacks anyway: pin it to keyring's own
    'no keyring' backend so an operator's desktop keyring cannot change the test."""
    import keyring
    from keyring.backends import fail

    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(before)


async def test_locked_key_prompt_wrong_then_right_and_a_cancelled_signature(
    tmp_path: Path, config_for: object, devnet: Devnet, no_keyring: None
) -> None:
    keystore = node_keystore(tmp_path / "data")
    config = chain_config(config_for(), devnet, keystore)  # type: ignore[operator]
    node = Node(config)
    app = FabstirApp(node, config)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: node.state == "running", "node running")
            await pilot.press("5")
            await wait_for(pilot, lambda: isinstance(app.screen, EarningsScreen), "earnings")
            assert node.chain.wallet_state == "locked"
            assert "cannot sign" in (node.chain_refusal() or "")
            for attempt in ("not the passphrase", PASSPHRASE):
                await pilot.press("k")
                await wait_for(pilot, lambda: isinstance(app.screen, PassphraseScreen), "prompt")
                field = app.screen.query_one(Input)
                assert field.password  # never echoed
                field.value = attempt
                await pilot.press("enter")
                await wait_for(
                    pilot,
                    lambda: node.chain.wallet_state in ("locked", "unlocked")
                    and isinstance(app.screen, EarningsScreen),
                    "unlock attempt done",
                    bound_s=60,
                )
            assert node.chain.wallet_state == "unlocked"
            outcomes = [a.outcome for a in node.recent_audit() if a.action == "unlock wallet"]
            assert outcomes[0].startswith("failed: wrong passphrase for keystore")
            assert outcomes[1] == "unlocked"
            assert all(PASSPHRASE not in log.message for log in node.recent_logs())

            # Unregister while not registered: the estimate reverts, nothing to confirm.
            await pilot.press("D")
            await wait_for(
                pilot,
                lambda: any("NotRegistered" in a.outcome for a in node.recent_audit()),
                "refusal decoded",
            )
            assert isinstance(app.screen, EarningsScreen)
            # A registration the operator cancels in the dialog signs nothing.
            await wait_for(pilot, lambda: any(m.sha256 for m in node.snapshot().models), "hash")
            await pilot.press("g")
            await wait_for(pilot, lambda: isinstance(app.screen, RegisterScreen), "form")
            assert isinstance(app.screen, RegisterScreen)
            app.screen.query_one("#reg-price-0", Input).value = "1"
            app.screen.submit()
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTxScreen), "confirm")
            await pilot.press("n")
            await wait_for(
                pilot,
                lambda: any(a.outcome == "cancelled" for a in node.recent_audit()),
                "cancel audited",
            )
            assert not devnet.nodes.functions.isRegistered(devnet.host).call()
            assert node.chain.sender is not None
            journal = node.store.query("SELECT count(*) FROM tx_journal") if node.store else []
            assert journal == [(0,)]
    finally:
        await node.stop()
