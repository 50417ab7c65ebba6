"""The figures an operator weighs before claiming or accepting a job (DESIGN §11.7), computed
purely from the job, our price and the node's measurements so the dialog and tests agree."""

from __future__ import annotations

from fabstir_tui.engine.chain.ledger import charge_of
from fabstir_tui.engine.jobs.views import JobQuote, JobView

__all__ = ["ZERO_ADDRESS", "make_quote"]

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
_MIB = 1024**2


def make_quote(
    view: JobView,
    *,
    our_price: int | None,
    fee_bps: int,
    gas_estimate_wei: int | None,
    tokens_per_s: float | None,
    model_bytes: int | None,
    free_bytes: int | None,
    now: int,
    token_symbol: str,
    token_decimals: int,
    refusal: str | None,
) -> JobQuote:
    """Quote `view` at our price: the charge as the contract computes it for max tokens, the
    fee and revenue, the net after gas (ETH jobs only), run time and memory fit.

    `our_price` falls back to the job's claimed price when we have none registered; a quote
    with neither has zero figures and says why in `refusal`. A `refusal` passed in wins over
    the ones derived here (no price, price above the client's maximum, deadline passed)."""
    price = our_price if our_price is not None else view.price_per_million
    charge = charge_of(view.max_tokens, price, view.escrow) if price is not None else 0
    fee = charge * fee_bps // 10_000
    revenue = charge - fee
    is_eth = view.token.lower() == ZERO_ADDRESS
    net = revenue - gas_estimate_wei if is_eth and gas_estimate_wei is not None else None
    run_s = view.max_tokens / tokens_per_s if tokens_per_s else None
    deadline_in_s = view.deadline - now
    fits, note = memory_fit(model_bytes, free_bytes)
    return JobQuote(
        job=view,
        price_per_million=price,
        expected_charge=charge,
        fee=fee,
        expected_revenue=revenue,
        gas_estimate_wei=gas_estimate_wei,
        expected_net=net,
        tokens_per_s=tokens_per_s,
        expected_run_s=run_s,
        deadline_in_s=deadline_in_s,
        fits_memory=fits,
        memory_note=note,
        token_symbol=token_symbol,
        token_decimals=token_decimals,
        refusal=refusal or _derived_refusal(view, price, deadline_in_s, token_symbol),
    )


def memory_fit(model_bytes: int | None, free_bytes: int | None) -> tuple[bool | None, str]:
    """Whether the model fits the memory left, with a note; None when either side is unknown."""
    if model_bytes is None or free_bytes is None:
        missing = "model size" if model_bytes is None else "free memory"
        return None, f"unknown: {missing} not measured"
    needs = f"needs {_mib(model_bytes)} of {_mib(free_bytes)} free"
    if model_bytes <= free_bytes:
        return True, f"fits: {needs}"
    return False, f"does not fit: {needs}"


def _derived_refusal(
    view: JobView, price: int | None, deadline_in_s: int, token_symbol: str
) -> str | None:
    if price is None:
        return f"no price registered for this model in {token_symbol} (register on Earnings)"
    if price > view.max_price_per_million:
        return (
            f"our price {price:,} per M is above the client's maximum "
            f"{view.max_price_per_million:,}"
        )
    if deadline_in_s <= 0:
        return "the deadline has passed"
    return None


def _mib(value: int) -> str:
    return f"{value / _MIB:,.1f} MiB"
