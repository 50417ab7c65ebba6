"""On-chain operator flows: form → preview → confirm dialog → Node command → outcome notice.

Every path that signs goes through `run_chain_actions`, so no action can skip the dialog that
shows what will be signed; refusals (read-only, locked key, a revert in the estimate) come back
from the Node, which audits them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir_tui.engine.chain.actions import ETH, ChainAction, describe
from fabstir_tui.engine.chain.events import ChainStatus
from fabstir_tui.ui.format import short_hex, token_amount
from fabstir_tui.ui.screens.confirm_tx import ConfirmTxScreen
from fabstir_tui.ui.screens.passphrase import PassphraseScreen
from fabstir_tui.ui.screens.register_form import PriceUnit, RegisterScreen

if TYPE_CHECKING:
    from fabstir_tui.ui.app import FabstirApp


def _fail(app: FabstirApp, title: str, text: str) -> bool:
    app.notify(text, title=title, severity="error", timeout=15, markup=False)
    return False


async def run_chain_actions(app: FabstirApp, actions: list[ChainAction]) -> bool:
    """Prepare, confirm and send each action in turn; stop at the first refusal or failure."""
    node = app.node
    for action in actions:
        try:
            prepared = await node.prepare_chain_action(action)
        except Exception as exc:
            return _fail(app, f"Cannot {describe(action)}", str(exc))
        signed = await app.push_screen_wait(
            ConfirmTxScreen(prepared.label, prepared.preview, prepared.notes)
        )
        if not signed:
            node.record_action(prepared.label, prepared.preview.description, "cancelled")
            app.notify("Nothing was signed.", title="Cancelled", markup=False)
            return False
        waiting = f"{prepared.preview.description} sent; waiting for it to be mined…"
        app.notify(waiting, title="Transaction sent", markup=False)
        try:
            outcome = await node.execute_chain_action(prepared)
        except Exception as exc:
            return _fail(app, f"{prepared.label} failed", str(exc))
        if not outcome.ok:
            return _fail(app, f"{prepared.label} {outcome.status}", outcome.error or "")
        fee = token_amount(outcome.fee_wei, 18, "ETH")
        app.notify(
            f"mined in block {outcome.block_number} (tx {short_hex(outcome.tx_hash)}, fee {fee})",
            title=prepared.label,
            markup=False,
        )
    return True


async def open_registration(app: FabstirApp, status: ChainStatus | None) -> None:
    """The register/update form, then its actions through the confirm dialog."""
    refusal = app.node.chain_refusal()
    if refusal is not None:
        app.node.record_action("register", "form not opened", f"refused: {refusal}")
        _fail(app, "Cannot register", refusal)
        return
    status = status or app.node.chain_status()
    if status is None:
        _fail(app, "Cannot register", "the chain side has not started yet")
        return
    # Prices are in one token: the registered one, else the configured payment token.
    priced_in = status.price_token if status.registered else status.payment_token
    unit = PriceUnit(ETH, "ETH", 18)
    for balance in status.balances:
        if priced_in and balance.token.lower() == priced_in.lower():
            unit = PriceUnit(balance.token, balance.symbol, balance.decimals)
    snapshot = app.node.snapshot()
    gpus = [d.name for d in snapshot.gpu.devices] if snapshot.gpu and snapshot.gpu.available else []
    form = RegisterScreen(status, list(snapshot.models), unit, gpus)
    actions = await app.push_screen_wait(form)
    if actions:
        await run_chain_actions(app, actions)


async def ask_passphrase(app: FabstirApp) -> None:
    """Prompt for the key's passphrase and unlock it, with the engine's progress on screen."""
    status = app.node.chain_status()
    if status is None or not status.enabled:
        _fail(app, "No chain", "no chain is configured (chain.rpc_urls), or it has not started")
        return
    if status.wallet == "unlocked":
        app.notify("The key is already unlocked.", markup=False)
        return
    if not status.address:
        _fail(app, "No key", status.wallet_detail or "no keystore")
        return
    passphrase = await app.push_screen_wait(PassphraseScreen(status.address, status.keystore))
    if not passphrase:
        return
    app.notify("Decrypting the keystore (a few seconds)…", title="Unlocking", markup=False)
    try:
        await app.node.unlock_wallet(passphrase)
    except Exception as exc:
        _fail(app, "Not unlocked", str(exc))
        return
    app.notify(f"key {status.address} unlocked", title="Unlocked", markup=False)
