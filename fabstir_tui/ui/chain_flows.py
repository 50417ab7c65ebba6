"""On-chain operator flows: form → preview → confirm dialog → Node command → outcome notice.

Every path that signs goes through `run_chain_actions`, so no action can skip the dialog that
shows what will be signed; refusals (read-only, locked key, a revert in the estimate) come back
from the Node, which audits them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir_tui.engine.chain.actions import ChainAction, describe
from fabstir_tui.engine.chain.events import ChainStatus
from fabstir_tui.ui.format import short_hex, token_amount
from fabstir_tui.ui.screens.confirm_tx import ConfirmTxScreen
from fabstir_tui.ui.screens.passphrase import PassphraseScreen
from fabstir_tui.ui.screens.register_form import PriceUnit, RegisterScreen

if TYPE_CHECKING:
    from fabstir_tui.ui.app import FabstirApp


async def run_chain_actions(app: FabstirApp, actions: list[ChainAction]) -> bool:
    """Prepare, confirm and send each action in turn; stop at the first refusal or failure."""
    node = app.node
    for action in actions:
        try:
            prepared = await node.prepare_chain_action(action)
        except Exception as exc:
            app.notify(
                str(exc),
                title=f"Cannot {describe(action)}",
                severity="error",
                timeout=12,
                markup=False,
            )
            return False
        signed = await app.push_screen_wait(ConfirmTxScreen(prepared.label, prepared.preview))
        if not signed:
            node.record_action(prepared.label, prepared.preview.description, "cancelled")
            app.notify("Nothing was signed.", title="Cancelled", markup=False)
            return False
        app.notify(
            f"{prepared.preview.description} sent; waiting for it to be mined…",
            title="Transaction sent",
            markup=False,
        )
        try:
            outcome = await node.execute_chain_action(prepared)
        except Exception as exc:
            app.notify(
                str(exc),
                title=f"{prepared.label} failed",
                severity="error",
                timeout=15,
                markup=False,
            )
            return False
        if not outcome.ok:
            app.notify(
                outcome.error or outcome.status,
                title=f"{prepared.label} {outcome.status}",
                severity="error",
                timeout=15,
                markup=False,
            )
            return False
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
        app.notify(refusal, title="Cannot register", severity="error", timeout=12, markup=False)
        app.node.record_action("register", "form not opened", f"refused: {refusal}")
        return
    status = status or app.node.chain.status
    unit = PriceUnit("ETH", 18)
    for balance in status.balances:
        if balance.token.lower() == app.config.chain.payment_token.lower():
            unit = PriceUnit(balance.symbol, balance.decimals)
    snapshot = app.node.snapshot()
    gpus = [d.name for d in snapshot.gpu.devices] if snapshot.gpu and snapshot.gpu.available else []
    form = RegisterScreen(status, list(snapshot.models), unit, gpus)
    actions = await app.push_screen_wait(form)
    if actions:
        await run_chain_actions(app, actions)


async def ask_passphrase(app: FabstirApp) -> None:
    """Prompt for the key's passphrase and unlock it, with the engine's progress on screen."""
    chain = app.node.chain
    if chain.wallet_state == "unlocked":
        app.notify("The key is already unlocked.", markup=False)
        return
    if not chain.address:
        app.notify(
            chain.status.wallet_detail or "no keystore",
            title="No key",
            severity="error",
            markup=False,
        )
        return
    passphrase = await app.push_screen_wait(PassphraseScreen(chain.address, str(chain.keystore)))
    if not passphrase:
        return
    app.notify("Decrypting the keystore (a few seconds)…", title="Unlocking", markup=False)
    try:
        await app.node.unlock_wallet(passphrase)
    except Exception as exc:
        app.notify(str(exc), title="Not unlocked", severity="error", timeout=12, markup=False)
        return
    app.notify(f"key {chain.address} unlocked", title="Unlocked", markup=False)
