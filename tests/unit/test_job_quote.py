"""make_quote: the claim dialog's figures, checked against values worked out by hand (to the
wei), the contract's rounding and cap, and every refusal the quote itself can see."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from fabstir_tui.engine.jobs.quote import ZERO_ADDRESS, make_quote, memory_fit
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobKind, JobState
from fabstir_tui.engine.jobs.views import JobQuote, JobView

MARKET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
FUSD = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
NOW = 1_800_000_000
MIB = 1024**2


def job(**changes: object) -> JobView:
    view = JobView(
        key=JobKey(JobKind.OPEN, 31337, MARKET, "7"),
        state=JobState.SEEN,
        model_id="0x" + "ab" * 32,
        model_name="tiny-llama",
        client="0x" + "c1" * 20,
        token=FUSD,
        escrow=10_000,
        max_tokens=2_000,
        max_price_per_million=1_000_000,
        price_per_million=None,
        deadline=NOW + 3_600,
    )
    return replace(view, **changes)  # type: ignore[arg-type]


def quote(view: JobView, **overrides: object) -> JobQuote:
    args: dict[str, object] = {
        "our_price": 250_000,
        "fee_bps": 250,
        "gas_estimate_wei": None,
        "tokens_per_s": 40.0,
        "model_bytes": None,
        "free_bytes": None,
        "now": NOW,
        "token_symbol": "FUSD",
        "token_decimals": 6,
        "refusal": None,
    }
    args.update(overrides)
    return make_quote(view, **args)  # type: ignore[arg-type]


def test_a_token_job_at_our_price() -> None:
    q = quote(job())
    # 2,000 tokens x 250,000 per M = 500 (under the 10,000 escrow); fee 2.5% = 12 (12.5 down).
    assert (q.price_per_million, q.expected_charge, q.fee, q.expected_revenue) == (
        250_000,
        500,
        12,
        488,
    )
    assert q.expected_net is None  # gas is paid in ETH, revenue in FUSD: no single net
    assert q.expected_run_s == 50.0  # 2,000 tokens at 40 tok/s
    assert q.deadline_in_s == 3_600
    assert (q.token_symbol, q.token_decimals, q.refusal) == ("FUSD", 6, None)
    assert q.job.job_id == "7"


def test_an_eth_job_nets_out_the_gas_to_the_wei() -> None:
    view = job(
        token=ZERO_ADDRESS,
        escrow=10**15,
        max_tokens=4_096,
        max_price_per_million=200_000_000_000_000,
    )
    q = quote(view, our_price=123_456_789_012_345, gas_estimate_wei=400_000_000_000)
    # 4,096 x 123,456,789,012,345 = 505,679,007,794,565,120; / 1e6 down = 505,679,007,794
    # (under the 10^15 escrow). Fee 250 bps: 126,419,751,948,500 / 10,000 = 12,641,975,194
    # down. Revenue 493,037,032,600; less 400,000,000,000 gas = 93,037,032,600.
    assert q.expected_charge == 505_679_007_794
    assert q.fee == 12_641_975_194
    assert q.expected_revenue == 493_037_032_600
    assert q.expected_net == 93_037_032_600
    assert q.gas_estimate_wei == 400_000_000_000


def test_the_escrow_caps_the_charge_and_gas_can_make_the_net_negative() -> None:
    view = job(token=ZERO_ADDRESS.upper().replace("0X", "0x"), escrow=3_000, max_tokens=1_000)
    q = quote(view, our_price=900_000, gas_estimate_wei=5_000)
    # 1,000 x 900,000 / 1e6 = 900 < 3,000: not capped; fee 22 (22.5 down); revenue 878.
    assert (q.expected_charge, q.fee, q.expected_revenue, q.expected_net) == (900, 22, 878, -4_122)
    capped = quote(job(escrow=300), our_price=900_000)
    # 2,000 x 900,000 / 1e6 = 1,800, capped at the 300 escrow; fee 7 (7.5 down); revenue 293.
    assert (capped.expected_charge, capped.fee, capped.expected_revenue) == (300, 7, 293)


def test_without_our_price_the_claimed_price_is_used() -> None:
    q = quote(job(price_per_million=100_000), our_price=None)
    # 2,000 x 100,000 / 1e6 = 200; fee 5; revenue 195.
    assert (q.price_per_million, q.expected_charge, q.fee, q.expected_revenue) == (
        100_000,
        200,
        5,
        195,
    )
    assert q.refusal is None


def test_refusals_the_quote_can_see() -> None:
    unpriced = quote(job(), our_price=None)
    assert (unpriced.expected_charge, unpriced.expected_revenue) == (0, 0)
    assert unpriced.refusal is not None and "no price registered" in unpriced.refusal
    assert "FUSD" in unpriced.refusal
    dear = quote(job(max_price_per_million=249_999))
    assert dear.refusal is not None and "above the client's maximum 249,999" in dear.refusal
    late = quote(job(deadline=NOW - 5))
    assert late.deadline_in_s == -5
    assert late.refusal == "the deadline has passed"
    told = quote(job(deadline=NOW - 5), refusal="model not loaded")
    assert told.refusal == "model not loaded"  # the caller's reason wins


def test_run_time_and_memory_fit() -> None:
    assert quote(job(), tokens_per_s=None).expected_run_s is None
    assert quote(job(), tokens_per_s=0.0).expected_run_s is None
    assert quote(job(max_tokens=100), tokens_per_s=8.0).expected_run_s == 12.5
    unknown = quote(job())
    assert unknown.fits_memory is None and "free memory" not in unknown.memory_note
    assert unknown.memory_note == "unknown: model size not measured"
    assert memory_fit(100, None) == (None, "unknown: free memory not measured")
    assert memory_fit(512 * MIB, 2_048 * MIB) == (True, "fits: needs 512.0 MiB of 2,048.0 MiB free")
    assert memory_fit(3 * MIB, 3 * MIB)[0] is True
    assert memory_fit(3 * MIB + 1, 3 * MIB) == (
        False,
        "does not fit: needs 3.0 MiB of 3.0 MiB free",
    )
    fits = quote(job(), model_bytes=10, free_bytes=20)
    assert fits.fits_memory is True


@given(
    max_tokens=st.integers(1, 10**6),
    price=st.integers(0, 10**18),
    escrow=st.integers(0, 10**24),
    fee_bps=st.integers(0, 10_000),
)
def test_fee_and_revenue_split_the_charge_exactly(
    max_tokens: int, price: int, escrow: int, fee_bps: int
) -> None:
    view = job(max_tokens=max_tokens, escrow=escrow, max_price_per_million=price)
    q = quote(view, our_price=price, fee_bps=fee_bps)
    assert 0 <= q.expected_charge <= escrow
    assert q.expected_charge == min(max_tokens * price // 1_000_000, escrow)
    assert q.fee + q.expected_revenue == q.expected_charge
    assert q.fee * 10_000 <= q.expected_charge * fee_bps < (q.fee + 1) * 10_000
