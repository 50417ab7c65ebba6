"""The registration form: stake, models and prices, payout and API URL, checked before signing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, SelectionList, Static

from fabstir_tui.engine.chain.actions import (
    ChainAction,
    Register,
    UpdateMetadata,
    UpdateModels,
    registration_metadata,
)
from fabstir_tui.engine.chain.events import ChainStatus
from fabstir_tui.engine.events import ModelInfo
from fabstir_tui.ui.format import token_amount


class FormError(ValueError):
    """A field the operator must fix; the message names it and what it accepts."""


def parse_units(text: str, decimals: int, what: str) -> int:
    """A decimal amount in a token's own unit to exact base units; refuses finer digits."""
    try:
        value = Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        raise FormError(f"{what}: {text!r} is not a number") from None
    if value < 0 or not value.is_finite():
        raise FormError(f"{what}: must be a positive number")
    units = value * (10**decimals)
    if units != units.to_integral_value():
        raise FormError(f"{what}: at most {decimals} decimals")
    return int(units)


@dataclass(frozen=True, slots=True)
class PriceUnit:
    """The token prices are typed in (the payment token, else ETH)."""

    symbol: str
    decimals: int


class RegisterScreen(ModalScreen[list[ChainAction] | None]):
    """Answers the actions to sign (register, or update models and metadata), or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(
        self, status: ChainStatus, models: list[ModelInfo], unit: PriceUnit, gpus: list[str]
    ) -> None:
        super().__init__()
        self.status = status
        self.models = [m for m in models if m.sha256 and m.error is None]
        self.unit = unit
        self.gpus = gpus

    def compose(self) -> ComposeResult:
        registered = self.status.registered
        title = "Update the registration" if registered else "Register this node"
        prices = dict(self.status.models)
        first_price = next(iter(prices.values()), 0)
        with Vertical(id="register-dialog", classes="dialog"):
            yield Label(title, classes="dialog-title")
            with VerticalScroll(id="register-fields"):
                if not registered:
                    minimum = token_amount(self.status.min_stake_wei, 18, "ETH")
                    yield Static(f"Stake (ETH, at least {minimum})", markup=False)
                    yield Input(
                        token_amount(self.status.min_stake_wei, 18).replace(",", ""),
                        id="reg-stake",
                    )
                yield Static(
                    f"Price per million tokens ({self.unit.symbol}), for every selected model",
                    markup=False,
                )
                price_text = token_amount(first_price, self.unit.decimals) if first_price else ""
                yield Input(price_text.replace(",", ""), placeholder="e.g. 0.002", id="reg-price")
                yield Static("Models to serve (hashed local GGUFs; space toggles)", markup=False)
                yield SelectionList[str](
                    *[
                        (
                            f"{Path(m.path).name}  0x{(m.sha256 or '')[:10]}…",
                            m.sha256 or "",
                            _on(m, prices),
                        )
                        for m in self.models
                    ],
                    id="reg-models",
                )
                if not registered:
                    yield Static("Payout address (earnings are withdrawn here)", markup=False)
                    yield Input(self.status.address, id="reg-payout")
                yield Static("API URL clients reach this node at (may stay empty)", markup=False)
                yield Input(_api_url(self.status.metadata), id="reg-api")
                yield Static("", id="reg-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Review (enter)", variant="primary", id="reg-ok")
                yield Button("Cancel", id="reg-cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "reg-ok":
            self.submit()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submit()

    def submit(self) -> None:
        """Validate every field; the first problem is shown under the form, nothing is sent."""
        try:
            actions = self.actions()
        except FormError as exc:
            self.query_one("#reg-error", Static).update(f"✗ {exc}")
            return
        self.dismiss(actions)

    def actions(self) -> list[ChainAction]:
        price = parse_units(self.query_one("#reg-price", Input).value, self.unit.decimals, "price")
        if price == 0:
            raise FormError("price: must be more than 0")
        chosen = list(self.query_one("#reg-models", SelectionList).selected)
        if not chosen:
            raise FormError("models: select at least one model to serve")
        models = tuple(("0x" + str(sha), price) for sha in chosen)
        api_url = self.query_one("#reg-api", Input).value.strip()
        if api_url and not api_url.startswith(("http://", "https://")):
            raise FormError("API URL: must start with http:// or https://")
        metadata = registration_metadata(api_url, self.gpus)
        if self.status.registered:
            actions: list[ChainAction] = [UpdateModels(models)]
            if metadata != self.status.metadata:
                actions.append(UpdateMetadata(metadata))
            return actions
        stake = parse_units(self.query_one("#reg-stake", Input).value, 18, "stake")
        if stake < self.status.min_stake_wei:
            minimum = token_amount(self.status.min_stake_wei, 18, "ETH")
            raise FormError(f"stake: the registry asks for at least {minimum}")
        payout = self.query_one("#reg-payout", Input).value.strip()
        if not (payout.startswith("0x") and len(payout) == 42):
            raise FormError("payout: an address, 0x and 40 hex digits")
        return [Register(stake, models, payout, metadata)]

    def action_cancel(self) -> None:
        self.dismiss(None)


def _label(model: ModelInfo) -> str:
    return f"{Path(model.path).name}  0x{(model.sha256 or '')[:10]}…"


def _on(model: ModelInfo, prices: dict[str, int]) -> bool:
    """Pre-select what we serve already, or every model on a first registration."""
    return not prices or ("0x" + (model.sha256 or "")) in prices


def _api_url(metadata: str) -> str:
    try:
        return str(json.loads(metadata).get("api_url", "")) if metadata else ""
    except (ValueError, AttributeError):
        return ""
