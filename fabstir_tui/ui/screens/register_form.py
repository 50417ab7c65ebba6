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
from textual.widgets import Button, Checkbox, Input, Label, Static

from fabstir_tui.engine.chain.actions import (
    ChainAction,
    Register,
    SetPrice,
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
    """The token prices are typed in and paid in (the payment token, else ETH)."""

    token: str
    symbol: str
    decimals: int


class RegisterScreen(ModalScreen[list[ChainAction] | None]):
    """Answers the actions to sign (register, or update models, prices and metadata), or None.
    An update of one model's price alone is a single setPrice call."""

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
        with Vertical(id="register-dialog", classes="dialog"):
            yield Label(title, classes="dialog-title")
            with VerticalScroll(id="register-fields"):
                if not registered:
                    minimum = token_amount(self.status.min_stake_wei, 18, "ETH")
                    yield Static(f"Stake (ETH, at least {minimum})", markup=False)
                    yield Input(
                        token_amount(self.status.min_stake_wei, 18).replace(",", ""),
                        id="reg-stake",
                        compact=True,
                    )
                yield Static(
                    f"Models to serve and their price per million tokens ({self.unit.symbol}); "
                    "hashed local GGUFs only",
                    markup=False,
                )
                for index, model in enumerate(self.models):
                    price = prices.get("0x" + (model.sha256 or ""), 0)
                    text = token_amount(price, self.unit.decimals).replace(",", "") if price else ""
                    with Horizontal(classes="reg-model-row"):
                        yield Checkbox(
                            _label(model), _on(model, prices), id=f"reg-model-{index}", compact=True
                        )
                        yield Input(
                            text, placeholder="e.g. 0.002", id=f"reg-price-{index}", compact=True
                        )
                if not self.models:
                    yield Static(
                        "No hashed model yet: add GGUF files to the models folder and wait "
                        "for their SHA-256 (Models screen).",
                        markup=False,
                    )
                if not registered:
                    yield Static("Payout address (earnings are withdrawn here)", markup=False)
                    yield Input(self.status.address, id="reg-payout", compact=True)
                yield Static("API URL clients reach this node at (may stay empty)", markup=False)
                yield Input(_api_url(self.status.metadata), id="reg-api", compact=True)
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
        chosen: list[tuple[str, int]] = []
        for index, model in enumerate(self.models):
            if not self.query_one(f"#reg-model-{index}", Checkbox).value:
                continue
            what = f"price of {Path(model.path).name}"
            text = self.query_one(f"#reg-price-{index}", Input).value
            price = parse_units(text, self.unit.decimals, what)
            if price == 0:
                raise FormError(f"{what}: must be more than 0")
            chosen.append(("0x" + (model.sha256 or ""), price))
        if not chosen:
            raise FormError("models: tick at least one model to serve")
        models = tuple(chosen)
        api_url = self.query_one("#reg-api", Input).value.strip()
        if api_url and not api_url.startswith(("http://", "https://")):
            raise FormError("API URL: must start with http:// or https://")
        metadata = registration_metadata(api_url, self.gpus)
        if self.status.registered:
            return self._updates(models, metadata)
        stake = parse_units(self.query_one("#reg-stake", Input).value, 18, "stake")
        if stake < self.status.min_stake_wei:
            minimum = token_amount(self.status.min_stake_wei, 18, "ETH")
            raise FormError(f"stake: the registry asks for at least {minimum}")
        payout = self.query_one("#reg-payout", Input).value.strip()
        if not (payout.startswith("0x") and len(payout) == 42):
            raise FormError("payout: an address, 0x and 40 hex digits")
        return [Register(stake, models, self.unit.token, payout, metadata)]

    def _updates(self, models: tuple[tuple[str, int], ...], metadata: str) -> list[ChainAction]:
        """The fewest calls: per-model setPrice when the set is unchanged, else setModels."""
        served = dict(self.status.models)
        actions: list[ChainAction] = []
        if {m for m, _ in models} == set(served):
            actions += [SetPrice(m, p) for m, p in models if served[m] != p]
        else:
            actions.append(UpdateModels(models))
        if metadata != self.status.metadata:
            actions.append(UpdateMetadata(metadata))
        if not actions:
            raise FormError("nothing changed: the registry already says this")
        return actions

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
